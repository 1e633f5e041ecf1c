"""gRPC channel and server arguments, and TLS credentials built from a :class:`TLSConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from easyremote_core import ConfigurationError, TLSConfig

LINK_METHOD = "/easyremote.v1.Gateway/Link"
#: Each end announces the largest frame it accepts in this metadata key (the call's
#: metadata one way, the initial reply metadata the other), so that a sender refuses a
#: frame its peer would refuse, with MessageTooLargeError, instead of losing the link.
MAX_MESSAGE_SIZE_KEY = "easyremote-max-message-size"


def peer_limit(metadata: object, default: int) -> int:
    """The peer's announced max_message_size, or ``default`` when it announced none."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == MAX_MESSAGE_SIZE_KEY:
            try:
                return max(int(value), 1)
            except ValueError:
                return default
    return default
SERVICE_NAME = "easyremote.v1.Gateway"

# Room for the envelope around a payload of max_message_size bytes, so that two peers
# with the same setting never trip gRPC's own limit; EasyRemote checks the exact limit.
ENVELOPE_OVERHEAD = 64 * 1024
_GRPC_MAX_LENGTH = 2**31 - 1

KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 3_000
MIN_PING_INTERVAL_MS = 5_000
RECONNECT_BACKOFF_MS = 1_000

# TCP_USER_TIMEOUT: gRPC core has no channel argument of its own for it. On Linux its
# posix endpoint (TrySetSocketTcpUserTimeout, gRFC A18) sets TCP_USER_TIMEOUT on every
# client and server socket to grpc.keepalive_timeout_ms whenever grpc.keepalive_time_ms
# is set and finite. So the keepalive pair below also yields TCP_USER_TIMEOUT = 3000 ms:
# data unacknowledged for 3 s ends the connection. Verified on grpcio 1.85 by reading the
# option back from the socket (tests/transports/test_grpc.py).
_KEEPALIVE: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


def message_limit(max_message_size: int) -> int:
    """gRPC's send/receive limit for an EasyRemote ``max_message_size``."""
    if max_message_size <= 0:
        raise ConfigurationError(f"max_message_size ({max_message_size}) must be a positive number of bytes")
    return min(max_message_size + ENVELOPE_OVERHEAD, _GRPC_MAX_LENGTH)


def channel_options(max_message_size: int, extra: Mapping[str, Any]) -> list[tuple[str, Any]]:
    limit = message_limit(max_message_size)
    options: dict[str, Any] = dict(_KEEPALIVE)
    options.update(
        {
            "grpc.max_send_message_length": limit,
            "grpc.max_receive_message_length": limit,
            "grpc.initial_reconnect_backoff_ms": RECONNECT_BACKOFF_MS,
            "grpc.min_reconnect_backoff_ms": RECONNECT_BACKOFF_MS,
            "grpc.max_reconnect_backoff_ms": RECONNECT_BACKOFF_MS,
            "grpc.enable_retries": 0,
        }
    )
    options.update(extra)
    return list(options.items())


def server_options(max_message_size: int, extra: Mapping[str, Any], handshake_timeout: float = 10.0,
                   ) -> list[tuple[str, Any]]:
    limit = message_limit(max_message_size)
    options: dict[str, Any] = dict(_KEEPALIVE)
    options.update(
        {
            # Permit the node's pings at any time: the gateway never answers too_many_pings.
            "grpc.http2.min_ping_interval_without_data_ms": MIN_PING_INTERVAL_MS,
            "grpc.http2.min_recv_ping_interval_without_data_ms": MIN_PING_INTERVAL_MS,
            "grpc.http2.max_ping_strikes": 0,
            "grpc.max_send_message_length": limit,
            "grpc.max_receive_message_length": limit,
            "grpc.so_reuseport": 0,
            # A TCP connection that has not finished its TLS and HTTP/2 handshake by then is
            # closed, and so is one that carries no RPC (no Link) for as long.
            "grpc.server_handshake_timeout_ms": max(1, int(handshake_timeout * 1000)),
            "grpc.max_connection_idle_ms": max(1000, int(handshake_timeout * 1000)),
        }
    )
    options.update(extra)
    return list(options.items())


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigurationError(f"tls.{what}: cannot read {path!r}: {exc.strerror or exc}") from None


def channel_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    if (tls.cert is None) != (tls.key is None):
        raise ConfigurationError("tls: a client certificate needs both cert and key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca, "ca"),
        private_key=_read(tls.key, "key"),
        certificate_chain=_read(tls.cert, "cert"),
    )


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    if tls.cert is None or tls.key is None:
        raise ConfigurationError("tls: a gateway needs both cert and key")
    if tls.require_client_cert and tls.ca is None:
        raise ConfigurationError("tls.require_client_cert needs tls.ca to verify client certificates")
    key, cert = _read(tls.key, "key"), _read(tls.cert, "cert")
    assert key is not None and cert is not None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=_read(tls.ca, "ca"), require_client_auth=tls.require_client_cert
    )
