"""The gRPC transport: one bidirectional ``Link`` stream per peer over grpc.aio."""

from __future__ import annotations

import errno
import logging
import math
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from easyremote_core import (
    Address,
    ConfigurationError,
    Connection,
    ConnectionHandler,
    ConnectionLostError,
    HealthProbe,
    LinkOptions,
    Listener,
    TLSConfig,
    Transport,
)
from easyremote_core._backend import TaskSet
from easyremote_core._tls import speaks_tls

from . import _errors, _options
from ._channel import ChannelStateWatch
from ._connection import ClientConnection, ServerConnection
from ._probe import GrpcChannelStateProbe

logger = logging.getLogger("easyremote.grpc")

_State = grpc.ChannelConnectivity
_START_TIMEOUT = 10.0  # seconds a listener's gRPC server may take to start


class GrpcTransport(Transport):
    """Links over gRPC (grpc.aio, so asyncio only), with HTTP/2 keepalive and a health service.

    :param tls: TLS material used when the :class:`LinkOptions` of a link carry none.
    :param channel_options: gRPC channel arguments that override the defaults on dialled links.
    :param server_options: gRPC server arguments that override the defaults on listeners.
    :param shutdown_grace: seconds a closing listener lets running RPCs finish before it
        cancels them (0: drop every link at once, so peers notice at once).
    """

    name = "grpc"
    label = "gRPC"
    backends = ("asyncio",)

    def __init__(
        self,
        *,
        tls: TLSConfig | None = None,
        channel_options: Mapping[str, Any] | None = None,
        server_options: Mapping[str, Any] | None = None,
        shutdown_grace: float = 0.0,
    ) -> None:
        if shutdown_grace < 0:
            raise ConfigurationError(f"shutdown_grace ({shutdown_grace}) must not be negative")
        self.tls = tls
        self.channel_options = dict(channel_options or {})
        self.server_options = dict(server_options or {})
        self.shutdown_grace = shutdown_grace

    def default_probes(self) -> Sequence[HealthProbe]:
        return (GrpcChannelStateProbe(),)

    async def wait_reachable(self, address: Address, options: LinkOptions) -> None:
        try:
            from easyremote_core import wait_until_listening
        except ImportError:  # a core without it: the caller waits out its full backoff
            await anyio.sleep_forever()
        await wait_until_listening(address)

    async def connect(self, address: Address, options: LinkOptions) -> Connection:
        _require_asyncio("connect")
        target = str(address)
        tls = options.tls or self.tls
        args = _options.channel_options(options.max_message_size, self.channel_options)
        if tls is not None:
            if tls.server_hostname:
                args.append(("grpc.ssl_target_name_override", tls.server_hostname))
            channel = ChannelStateWatch(
                grpc.aio.secure_channel(target, _options.channel_credentials(tls), options=args))
        else:
            channel = ChannelStateWatch(grpc.aio.insecure_channel(target, options=args))
        try:
            with anyio.fail_after(options.connect_timeout):
                await _wait_until_ready(channel, address, secure=tls is not None)
                announce = ((_options.MAX_MESSAGE_SIZE_KEY, str(options.max_message_size)),)
                link: Any = channel.channel.stream_stream(_options.LINK_METHOD)
                call = link(wait_for_ready=False, metadata=announce)
                await _wait_until_accepted(call, target)
                peer_max = _options.peer_limit(await call.initial_metadata(), options.max_message_size)
        except BaseException as exc:
            state = channel.get_state()
            with anyio.CancelScope(shield=True):
                await channel.close()
            if isinstance(exc, TimeoutError):
                raise _errors.no_link_in_time(target, options.connect_timeout, state) from None
            raise
        logger.debug("gRPC link to %s open", target)
        return ClientConnection(channel, call, target, options.max_message_size, peer_max)

    async def listen(self, host: str, port: int, options: LinkOptions) -> Listener:
        _require_asyncio("listen")
        tls = options.tls or self.tls
        endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        taken = _port_taken(host, port)
        if taken is not None:  # found before gRPC core logs its own "Failed to add port" on stderr
            raise taken
        server = grpc.aio.server(options=_options.server_options(options.max_message_size, self.server_options,
                                                                 options.handshake_timeout))
        try:
            if tls is not None:
                bound = server.add_secure_port(endpoint, _options.server_credentials(tls))
            else:
                bound = server.add_insecure_port(endpoint)
        except RuntimeError as exc:
            await server.stop(None)
            raise _port_taken(host, port) or OSError(f"cannot listen on {endpoint}: {exc}") from None
        except BaseException:
            await server.stop(None)
            raise
        if not bound:
            await server.stop(None)
            raise OSError(f"cannot listen on {endpoint}")
        return GrpcListener(server, bound, options, self.shutdown_grace)


class GrpcListener(Listener):
    """A grpc.aio server serving the Link method and ``grpc.health.v1.Health``."""

    def __init__(self, server: grpc.aio.Server, port: int, options: LinkOptions, shutdown_grace: float) -> None:
        self.port = port
        self._server = server
        self._options = options
        self._grace = shutdown_grace
        self._health = health.aio.HealthServicer()
        self._incoming_send, self._incoming = anyio.create_memory_object_stream[ServerConnection](math.inf)
        self._connections: set[ServerConnection] = set()  # each until its reader and its writes ended
        self._started = False
        self._closing = False
        self._stopped = anyio.Event()
        handler = grpc.method_handlers_generic_handler(
            _options.SERVICE_NAME, {"Link": grpc.stream_stream_rpc_method_handler(self._link)}
        )
        server.add_generic_rpc_handlers((handler,))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)

    async def serve(self, handler: ConnectionHandler) -> None:
        if self._started:
            raise RuntimeError("GrpcListener.serve() runs once")
        self._started = True
        try:
            if self._closing:
                return
            # Never cancelled half-way: grpc.aio's serving task then fails with InvalidStateError
            # when it reports the start, and server.stop() raises that.
            with anyio.CancelScope(shield=True), anyio.fail_after(_START_TIMEOUT):
                await self._server.start()
                for service in ("", _options.SERVICE_NAME):
                    await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
            logger.debug("gRPC listener serving on port %d", self.port)
            # Each link in a task of the loop's own (TaskSet): an anyio task group's costs a
            # gateway ~3 KiB more per link. _run reports its own failures.
            links = TaskSet(lambda exc: logger.error("gRPC link task failed", exc_info=exc))

            async def accept() -> None:
                async for connection in self._incoming:
                    links.start_soon(self._run, handler, connection)

            await links.own(accept)
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def _run(self, handler: ConnectionHandler, connection: ServerConnection) -> None:
        """One link: its reader and writer beside the handler, all ended before this returns."""
        try:
            connection.start_io()
            try:
                await handler(connection)
            except anyio.get_cancelled_exc_class():
                connection.abort("the gateway is shutting down")
                raise
            except (ConnectionLostError, anyio.EndOfStream) as exc:
                logger.debug("link from %s ended: %s", connection.peer, exc or type(exc).__name__)
                connection.abort("the link handler ended")
            except Exception:
                logger.exception("link handler for %s raised", connection.peer)
                connection.abort("the gateway's link handler failed")
            else:
                await connection.aclose()
            finally:
                await connection.reap()  # shielded: ends the reader and the writer
        finally:
            self._connections.discard(connection)

    async def _link(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        """The Link RPC: hand a connection to ``serve`` and hold the RPC until it closes."""
        if self._closing:
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details("the gateway is shutting down")
            return
        own = self._options.max_message_size
        # The initial metadata tells the dialling peer the link is accepted, and our limit.
        await context.send_initial_metadata(((_options.MAX_MESSAGE_SIZE_KEY, str(own)),))
        peer_max = _options.peer_limit(context.invocation_metadata(), own)
        connection = ServerConnection(context, own, peer_max)
        self._connections.add(connection)
        try:
            self._incoming_send.send_nowait(connection)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            connection.abort("the gateway is shutting down")
        await connection.run_rpc()

    async def aclose(self) -> None:
        if self._closing:
            await self._stopped.wait()
            return
        self._closing = True
        try:
            self._incoming_send.close()
            await self._health.enter_graceful_shutdown()
            await self._server.stop(self._grace or None)
            for connection in list(self._connections):  # links that never reached the handler
                connection.abort("the gateway is shutting down")
                await connection.reap()
            self._connections.clear()
        finally:
            self._stopped.set()


def _port_taken(host: str, port: int) -> OSError | None:
    """``OSError(EADDRINUSE)`` if something listens on ``host:port`` (gRPC says only "Failed to bind")."""
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return OSError(errno.EADDRINUSE, f"port {port} on {host} is already in use")
    return None


async def _wait_until_ready(channel: ChannelStateWatch, address: Address, *, secure: bool) -> None:
    """Wait for READY; fail at the first TRANSIENT_FAILURE (the caller's retry policy owns retries)."""
    target = str(address)
    state = channel.get_state(try_to_connect=True)
    while state is not _State.READY:
        if state is _State.TRANSIENT_FAILURE:
            report = await _failure_reason(channel)
            plain_met_tls = (not secure and "socket closed" in report.lower()
                             and await speaks_tls(address.host, address.port))
            raise _errors.unreachable(target, report, secure=secure, speaks_tls=plain_met_tls)
        if state is _State.SHUTDOWN:
            raise _errors.shut_down(target)
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)


async def _failure_reason(channel: ChannelStateWatch) -> str:
    """gRPC tells why a channel failed only through a call: ask one that fails at once."""
    call: Any = channel.channel.stream_stream(_options.LINK_METHOD)(wait_for_ready=False)
    try:
        await call.read()
    except grpc.aio.AioRpcError as exc:
        return exc.details() or exc.code().name
    finally:
        call.cancel()
    return "TRANSIENT_FAILURE"


async def _wait_until_accepted(call: grpc.aio.StreamStreamCall, target: str) -> None:
    await call.initial_metadata()
    if not call.done():
        return
    code, details = await call.code(), await call.details()
    if code is grpc.StatusCode.OK:
        return  # accepted and closed at once; the first receive reports the orderly close
    raise _errors.refused(target, code, details, _options.LINK_METHOD)


def _require_asyncio(operation: str) -> None:
    try:
        import sniffio
    except ImportError:  # trio needs sniffio, so without it this is asyncio
        return
    library = sniffio.current_async_library()
    if library != "asyncio":
        raise ConfigurationError(
            f"the grpc transport cannot {operation} under {library}: grpc.aio runs on asyncio only; "
            f"use transport='tcp' under {library}"
        )
