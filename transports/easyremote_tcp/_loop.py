"""A tcp link without TLS on asyncio, driven by an asyncio protocol.

asyncio hands a socket's bytes to a callback. Cutting them into frames there, and writing
frames straight to the transport, saves what reading a byte stream in a loop costs per frame:
a task switch to the reader and to the writer, a lock, a pause and resume of reading, a copy
into a read queue. Frames queued in one turn of the event loop go out together in one write
at the start of the next, so a burst of answers costs one system call. TLS links and trio use
:class:`~easyremote_tcp.TcpConnection` over anyio's streams.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, cast

import anyio
from anyio.abc import SocketAttribute

from easyremote_core import ConnectionAttribute, ConnectionLostError, MessageTooLargeError, ProtocolError
from easyremote_core._connection import Connection

from ._wire import _COALESCE_LIMIT, _HEADER, GREETING, GREETING_CUT, FrameParser, check_greeting, describe

_READ_AHEAD = 4 * 1024 * 1024  # bytes read and not yet taken as frames before reading pauses
_CLOSE_LINGER = 1.0  # seconds an orderly close waits for the peer's own close
# Frames queued in one turn of the loop go out together at its end, or as soon as this many
# wait: a burst (32 calls read at once, say) then reaches the peer in parts, and the peer
# starts on the first part while this side handles the rest. Written only at the end of the
# turn, a burst crossed gateway and node whole, each process idle while another worked
# (3,800 calls/s at 32 callers on 2 cores with one core idle; 5,500-6,100 with parts of 16).
_FLUSH_FRAMES = 16


class LoopConnection(FrameParser, Connection, asyncio.Protocol):
    """One tcp link, as both the asyncio protocol of its socket and an EasyRemote connection."""

    def __init__(self, peer: str, max_message_size: int) -> None:
        self.peer = peer
        self._max = max_message_size
        self._init_frames()
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._greeted = False  # the peer's greeting was read
        self._greeting_error: ProtocolError | None = None
        self._readable: asyncio.Future[None] | None = None  # a receive() waiting for bytes
        # Headers and frames queued and not yet handed to the transport: those of this turn of
        # the loop, and those waiting while the transport's buffer is above its high-water mark
        # (the peer reads slowly), uncopied instead of appended to that buffer. See _write_out.
        self._backlog: deque[bytes] = deque()
        self._backlog_bytes = 0
        self._flush_scheduled = False
        self._write_paused = False
        self._can_write = asyncio.Event()  # set while not paused and nothing waits in the backlog
        self._can_write.set()
        self._read_paused = False
        self._eof = False  # the peer closed its side, or the socket is gone
        self._lost: Exception | None = None  # why the socket went, if it broke
        self._peer_closed = asyncio.Event()  # the peer's FIN, or the socket is gone
        self._gone = asyncio.Event()  # connection_lost was called
        self._closed = False  # no more sends or receives
        self._aborted = False  # the close is a reset
        self._handler: Callable[[bytes], None] | None = None  # deliver_frames: who takes each frame
        self._delivery_failed: BaseException | None = None  # what the handler (or a frame) raised

    @classmethod
    async def dial(cls, host: str, port: int, peer: str, max_message_size: int) -> LoopConnection:
        """Open the TCP connection (``OSError`` when it fails); then :meth:`greet`."""
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                lambda: cls(peer, max_message_size), host, port, happy_eyeballs_delay=0.25)
        except TypeError:  # an event loop without happy eyeballs (uvloop)
            _, connection = await loop.create_connection(lambda: cls(peer, max_message_size), host, port)
        return connection

    @classmethod
    async def accepted(cls, sock: socket.socket, peer: str, max_message_size: int) -> LoopConnection:
        """Take a socket ``accept()`` returned; then :meth:`greet`."""
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.connect_accepted_socket(lambda: cls(peer, max_message_size), sock)
        except BaseException:
            sock.close()
            raise
        return connection

    # -- the protocol's side --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is one without subclassing it
        self._transport.write(GREETING)

    def data_received(self, data: bytes) -> None:
        if not self._greeted:
            self._buffer += data
            if len(self._buffer) < len(GREETING):
                return
            try:
                check_greeting(bytes(self._buffer[: len(GREETING)]))
            except ProtocolError as exc:
                self._greeting_error = exc
                self._buffer.clear()
                self._wake_reader()
                return
            self._greeted = True
            rest = bytes(self._buffer[len(GREETING):])
            self._buffer.clear()
            self._add(rest)
        else:
            self._add(data)
        if self._handler is not None:
            self._deliver()
            return
        if len(self._buffer) > _READ_AHEAD and not self._read_paused and self._transport is not None:
            self._read_paused = True  # nobody takes frames; the peer waits (TCP flow control)
            self._transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._peer_closed.set()
        self._wake_reader()
        return True  # the transport stays open for our own orderly close

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = exc
        self._peer_closed.set()
        self._gone.set()
        self._backlog.clear()
        self._backlog_bytes = 0
        self._can_write.set()
        self._wake_reader()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._write_out()

    def _write_out(self) -> None:
        """Hand the backlog to the transport, in writes of up to ``_COALESCE_LIMIT`` bytes (a large
        frame alone, not copied into a join), until the transport is above its high-water mark
        (it calls ``pause_writing`` from ``write``) or the backlog is empty."""
        transport = self._transport
        backlog = self._backlog
        while backlog and not self._write_paused and transport is not None and not transport.is_closing():
            if self._backlog_bytes <= _COALESCE_LIMIT:  # the usual case: everything in one write
                data = b"".join(backlog) if len(backlog) > 1 else backlog[0]
                backlog.clear()
                self._backlog_bytes = 0
                transport.write(data)
                break
            batch: list[bytes] = []
            size = 0
            while backlog and size < _COALESCE_LIMIT:
                if batch and len(backlog[0]) >= _COALESCE_LIMIT:
                    break
                piece = backlog.popleft()
                batch.append(piece)
                size += len(piece)
            self._backlog_bytes -= size
            transport.write(b"".join(batch) if len(batch) > 1 else batch[0])
        if not self._write_paused and not backlog:
            self._can_write.set()

    def deliver_frames(self, handler: Callable[[bytes], None]) -> None:
        """See ``ConnectionAttribute.deliver_frames``."""
        self._handler = handler
        self._resume_reading()
        self._deliver()

    def _deliver(self) -> None:
        """Hand each whole frame read to the handler; stop at the first failure."""
        handler = self._handler
        while handler is not None and self._delivery_failed is None:
            try:
                frame = self._take_frame()
                if frame is None:
                    return
                handler(frame)
            except Exception as exc:  # a frame over the limit, or what the handler raised
                self._delivery_failed = exc
                self._clear_frames()
                if self._transport is not None and not self._read_paused:
                    self._read_paused = True  # nobody takes frames any more
                    self._transport.pause_reading()
                self._wake_reader()

    def _wake_reader(self) -> None:
        waiter = self._readable
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def greet(self) -> None:
        """Wait for the peer's greeting (ours went out on connect); the link is reset if it fails."""
        try:
            while not self._greeted:
                if self._greeting_error is not None:
                    raise self._greeting_error
                if self._eof:
                    if self._lost is not None:
                        raise self._lost
                    raise ProtocolError(GREETING_CUT)
                await self._wait_readable()
        except BaseException:
            self._transport_abort()
            raise

    async def _wait_readable(self) -> None:
        self._readable = self._loop.create_future()
        try:
            await self._readable
        finally:
            self._readable = None

    # -- the connection's side ------------------------------------------------------------

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {
            ConnectionAttribute.send_nowait: lambda: self.send_nowait,
            ConnectionAttribute.buffered_bytes: lambda: self.buffered_bytes,
            ConnectionAttribute.deliver_frames: lambda: self.deliver_frames,
            SocketAttribute.raw_socket: lambda: self._socket(),
        }

    def _socket(self) -> socket.socket:
        assert self._transport is not None
        return self._transport.get_extra_info("socket")

    def buffered_bytes(self) -> int:
        transport = self._transport
        written = transport.get_write_buffer_size() if transport is not None else 0
        return self._backlog_bytes + written

    def send_nowait(self, frame: bytes) -> None:
        if len(frame) > self._max:
            raise MessageTooLargeError(f"frame of {len(frame)} bytes exceeds max_message_size ({self._max})")
        if self._closed or self._transport is None or self._transport.is_closing():
            raise ConnectionLostError(f"link to {self.peer} is closed")
        self._backlog.append(_HEADER.pack(len(frame)))
        self._backlog.append(frame)
        self._backlog_bytes += _HEADER.size + len(frame)
        if len(self._backlog) >= 2 * _FLUSH_FRAMES and not self._write_paused:  # a header and a frame each
            self._write_out()
            return
        if not self._flush_scheduled and not self._write_paused:
            self._flush_scheduled = True  # what this turn of the loop queues goes out together
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._write_out()

    async def send(self, frame: bytes) -> None:
        """Queue ``frame``, then wait while the socket's write buffer is full."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        self.send_nowait(frame)
        await self._can_write.wait()
        if self._lost is not None:
            raise ConnectionLostError(f"link to {self.peer} broke: {describe(self._lost)}")

    async def receive(self) -> bytes:
        while True:
            failed = self._delivery_failed
            if failed is not None:
                if isinstance(failed, MessageTooLargeError):
                    await self.abort()
                raise failed
            try:
                frame = self._take_frame() if self._handler is None else None
            except MessageTooLargeError:
                self._clear_frames()
                await self.abort()
                raise
            if frame is not None:
                if len(self._buffer) <= _READ_AHEAD // 2:
                    self._resume_reading()
                return frame
            if self._closed and not self._eof:
                raise ConnectionLostError(f"link to {self.peer} is closed")
            if self._eof:
                if self._lost is not None:
                    raise ConnectionLostError(f"link to {self.peer} broke: {describe(self._lost)}")
                if self._closed and self._aborted:
                    raise ConnectionLostError(f"link to {self.peer} is closed")
                if self._in_a_frame():
                    raise ConnectionLostError(f"{self.peer} closed the link in the middle of a frame")
                raise anyio.EndOfStream
            if self._readable is not None:
                raise anyio.BusyResourceError("receiving from")
            self._resume_reading()  # what is buffered is no whole frame: more must be read
            await self._wait_readable()

    def _resume_reading(self) -> None:
        if self._read_paused and self._transport is not None:
            self._read_paused = False
            self._transport.resume_reading()

    async def drop(self) -> None:
        """Reset the link at once: it is dead, so there is no peer to wait for."""
        await self.abort()

    async def aclose(self) -> None:
        """Close in an orderly way: what was queued goes out, then FIN; wait a moment for the
        peer's own close (so data still arriving is not answered with a reset), then release."""
        transport = self._transport
        if transport is None or self._gone.is_set():
            self._closed = True
            return
        if not self._closed and not self._aborted:
            self._closed = True
            self._write_out()
            with anyio.move_on_after(_CLOSE_LINGER):  # what waits in the backlog goes before the FIN
                await self._can_write.wait()
            try:
                transport.write_eof()  # sent once the write buffer has drained
            except OSError:
                pass
            with anyio.move_on_after(_CLOSE_LINGER):
                await self._peer_closed.wait()
        self._closed = True
        self._transport_abort() if self._aborted else transport.close()
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_LINGER):
            await self._gone.wait()

    async def abort(self) -> None:
        """Reset the link at once (RST), as a dying process would; the peer sees ``ConnectionLostError``."""
        self._mark_aborted()
        self._closed = True
        self._backlog.clear()
        self._backlog_bytes = 0
        self._transport_abort()
        self._wake_reader()
        if self._transport is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_LINGER):
                await self._gone.wait()

    def _mark_aborted(self) -> None:
        """Make the coming close a reset (SO_LINGER 0) instead of an orderly FIN."""
        if self._aborted or self._transport is None or self._gone.is_set():
            return
        self._aborted = True
        try:
            self._socket().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:  # already closed
            pass

    def _transport_abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
