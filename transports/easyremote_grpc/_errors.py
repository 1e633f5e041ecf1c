"""Where gRPC's failures become EasyRemote's errors: every grpc status and exception the transport
meets is put into words, and into an EasyRemote exception, here and nowhere else."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
from grpc._cython import cygrpc  # type: ignore[attr-defined]

from easyremote_core import ConnectionLostError, EasyRemoteError, GatewayUnavailableError, ProtocolError
from easyremote_core._tls import CLIENT_CERT, PLAIN_TO_TLS, explain

#: What a failed read or write of a gRPC call raises.
GRPC_FAILURES = (grpc.RpcError, grpc.aio.BaseError, asyncio.InvalidStateError)


def describe_status(code: grpc.StatusCode | None, details: str | None) -> str:
    """A call's status in words: ``UNAVAILABLE: Socket closed``."""
    name = code.name if code is not None else "UNKNOWN"
    text = f"{name}: {details}" if details else name
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and details and "larger than max" in details:
        text += " (a frame exceeded the receiver's max_message_size)"
    return text


def describe_failure(exc: BaseException | None) -> str:
    """Why a read or write failed, in words, from what it raised (``None``: it was cancelled)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return describe_status(exc.code(), exc.details())
    if exc is None or isinstance(exc, (asyncio.CancelledError, cygrpc.ExecuteBatchError)):
        # ExecuteBatchError: an operation on an RPC the peer's end already reset
        return "the peer went away without closing the link"
    return f"{type(exc).__name__}: {exc}"


def link_broke(peer: str, reason: str) -> ConnectionLostError:
    return ConnectionLostError(f"link to {peer} broke: {reason}")


def unreachable(target: str, report: str, *, secure: bool, speaks_tls: bool | None = None) -> GatewayUnavailableError:
    """A channel that failed to connect: ``report`` is gRPC's words, given a cause first when
    they name one (a TLS failure), or when a plain channel met a gateway that ``speaks_tls``."""
    cause = explain(report)
    if cause is None and "socket closed" in report.lower():
        if secure:  # TLS 1.3: a refused client certificate closes the link right after the handshake
            cause = f"the gateway closed the link right after the TLS handshake; most likely {CLIENT_CERT}"
        elif speaks_tls:
            cause = PLAIN_TO_TLS
    return GatewayUnavailableError(f"cannot reach gateway at {target}: " + (f"{cause} (gRPC: {report})" if cause
                                                                           else report))


def refused(target: str, code: grpc.StatusCode | None, details: str | None, method: str) -> EasyRemoteError:
    """The gateway ended the Link call as it began: not a gateway at all (no such method), or a refusal."""
    reason = describe_status(code, details)
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return ProtocolError(f"{target} does not serve {method}; is it an EasyRemote gateway? ({reason})")
    return GatewayUnavailableError(f"gateway at {target} refused the link: {reason}")


def no_link_in_time(target: str, timeout: float, state: grpc.ChannelConnectivity) -> GatewayUnavailableError:
    return GatewayUnavailableError(f"cannot reach gateway at {target}: no link within connect_timeout ({timeout}s), "
                                   f"channel state {state.name}")


def shut_down(target: str) -> GatewayUnavailableError:
    return GatewayUnavailableError(f"cannot reach gateway at {target}: the channel was shut down")
