"""The in-memory transport: links inside one process, for fast tests. Registered as ``memory``."""

from __future__ import annotations

import itertools
import logging
import math

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._address import Address
from .._errors import ConnectionLostError, GatewayUnavailableError, MessageTooLargeError
from .._transport import Connection, ConnectionHandler, LinkOptions, Listener, Transport
from ..hookspecs import hookimpl

logger = logging.getLogger("easyremote.memory")
_listeners: dict[int, MemoryListener] = {}
_ports = itertools.count(40000)


class MemoryConnection(Connection):
    """One end of an in-memory link. ``abort()`` and ``blackhole()`` simulate faults."""

    def __init__(self, send: MemoryObjectSendStream[bytes | None], receive: MemoryObjectReceiveStream[bytes | None],
                 peer: str, max_message_size: int) -> None:
        self._send = send
        self._receive = receive
        self.peer = peer
        self._max = max_message_size
        self._closed = False
        self._aborted = False
        self.blackholed = False
        self.other: MemoryConnection | None = None

    async def send(self, frame: bytes) -> None:
        if len(frame) > self._max:
            raise MessageTooLargeError(f"frame of {len(frame)} bytes exceeds max_message_size ({self._max})")
        if self._closed or self._aborted:
            raise ConnectionLostError("connection is closed")
        if self.blackholed:
            return
        try:
            await self._send.send(frame)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise ConnectionLostError("peer went away") from None

    async def receive(self) -> bytes:
        try:
            frame = await self._receive.receive()
        except anyio.EndOfStream:
            raise ConnectionLostError("peer went away") from None
        except anyio.ClosedResourceError:
            raise ConnectionLostError("connection is closed") from None
        if frame is None:  # the peer's orderly close
            raise anyio.EndOfStream
        if self.blackholed:
            await anyio.sleep_forever()
        return frame

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._aborted:
            try:
                self._send.send_nowait(None)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
        await self._send.aclose()
        await self._receive.aclose()

    async def drop(self) -> None:
        self.abort()
        await self.aclose()

    def abort(self) -> None:
        """Break the link as a dying process would: the peer sees ``ConnectionLostError``."""
        self._aborted = True
        self._send.close()
        self._receive.close()

    def blackhole(self) -> None:
        """Drop every frame both ways while keeping the link open (a half-open link)."""
        self.blackholed = True
        if self.other is not None:
            self.other.blackholed = True


class MemoryListener(Listener):
    def __init__(self, port: int, options: LinkOptions) -> None:
        self.port = port
        self.options = options
        self._send, self._incoming = anyio.create_memory_object_stream[MemoryConnection](math.inf)
        self.connections: list[MemoryConnection] = []
        self.unresponsive = False  # new links never finish connecting, as behind a black hole
        _listeners[port] = self

    async def serve(self, handler: ConnectionHandler) -> None:
        async def run(connection: MemoryConnection) -> None:
            try:
                await handler(connection)
            except (ConnectionLostError, anyio.EndOfStream):
                pass
            except Exception:  # one failing link must not stop the listener
                logger.exception("connection handler failed for %s", connection.peer)
            finally:
                await connection.aclose()
                self.connections.remove(connection)

        try:
            async with anyio.create_task_group() as tg:
                async for connection in self._incoming:
                    self.connections.append(connection)
                    tg.start_soon(run, connection)
                tg.cancel_scope.cancel()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if _listeners.get(self.port) is self:
            del _listeners[self.port]
        self._send.close()
        for connection in list(self.connections):
            connection.abort()

    def accept(self, connection: MemoryConnection) -> None:
        try:
            self._send.send_nowait(connection)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise GatewayUnavailableError(f"memory:{self.port} refused the connection") from None


class MemoryTransport(Transport):
    """Links between tasks of one process; the address host is ignored."""

    name = "memory"
    backends = ("asyncio", "trio")

    async def connect(self, address: Address, options: LinkOptions) -> Connection:
        await anyio.lowlevel.checkpoint()
        listener = _listeners.get(address.port)
        if listener is None:
            raise GatewayUnavailableError(f"memory:{address.port}: connection refused")
        if listener.unresponsive:
            await anyio.sleep(options.connect_timeout)
            raise GatewayUnavailableError(f"memory:{address.port}: no answer within connect_timeout "
                                          f"({options.connect_timeout} s)")
        limit = min(options.max_message_size, listener.options.max_message_size)
        to_server, from_client = anyio.create_memory_object_stream[bytes | None](64)
        to_client, from_server = anyio.create_memory_object_stream[bytes | None](64)
        client = MemoryConnection(to_server, from_server, f"memory:{address.port}", limit)
        server = MemoryConnection(to_client, from_client, "memory:client", limit)
        client.other, server.other = server, client
        listener.accept(server)
        return client

    async def listen(self, host: str, port: int, options: LinkOptions) -> Listener:
        await anyio.lowlevel.checkpoint()
        if port == 0:
            port = next(p for p in _ports if p not in _listeners)
        elif port in _listeners:
            raise OSError(f"memory port {port} is already in use")
        return MemoryListener(port, options)


@hookimpl
def easyremote_transports() -> dict[str, type[Transport]]:
    return {"memory": MemoryTransport}
