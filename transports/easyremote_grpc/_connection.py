"""The two ends of a gRPC link: a client stream call and a server RPC, as :class:`Connection`."""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import unquote

import anyio
import grpc
import grpc.aio
from anyio import TypedAttributeSet, typed_attribute

from easyremote_core import (
    Connection,
    ConnectionAttribute,
    ConnectionLostError,
    MessageTooLargeError,
    ProtocolError,
)
from easyremote_core._logs import capped

from ._channel import ChannelStateWatch
from ._errors import GRPC_FAILURES, describe_failure, describe_status, link_broke

logger = capped(logging.getLogger("easyremote.grpc"))

# How long an orderly close waits for queued frames to go out and for the gateway to
# end the RPC, and how long a closed connection waits for its reader and its write to end
# with the RPC before it cancels them.
CLOSE_TIMEOUT = 1.0

# One gRPC message carries one frame or several. Every message says which by its
# first byte (a serialized envelope never begins with a byte below 0x08):
#   empty        the dialling peer closes the link in an orderly way (a server cannot
#                tell the dialling peer's half-close from a read that failed: gRPC
#                Python reports both as EOF)
#   0x00 + frame one frame that is empty or begins with 0x00 or 0x01
#   0x01 + ...   several frames, each a 4-byte big-endian length and the frame
#   otherwise    the message is the frame
CLOSE_MARKER = b""
_ESCAPE = 0x00
_BATCH = 0x01
_ESCAPE_PREFIX = b"\x00"
_BATCH_PREFIX = b"\x01"
_LENGTH = struct.Struct(">I")
# Frames queued together go out in one message up to this many bytes; grpc.aio costs
# the same per message whatever its size, and the receiver's gRPC limit always has room.
BATCH_BYTES = 64 * 1024
# Past this many bytes waiting to be written, ``send`` waits for the writes.
SEND_HIGH_WATER = 4 * 1024 * 1024
# A message of this many bytes or more is kept KEEP_WRITTEN seconds after its write starts (or
# until the next one): glibc gives a freed buffer this large back to the system at once, and the
# next call's messages then cost fresh pages (10 MB echoes ~25 % slower without it).
KEEP_WRITTEN_BYTES = 128 * 1024
KEEP_WRITTEN = 0.25
# Frames read but not yet received; past it the reader stops reading (gRPC flow control
# then holds the peer back).
RECEIVE_BUFFER = 1024


def pack(frames: list[bytes]) -> bytes:
    """One gRPC message carrying ``frames`` (at least one)."""
    if len(frames) == 1:
        frame = frames[0]
        if not frame or frame[0] <= _BATCH:
            return _ESCAPE_PREFIX + frame
        return frame
    parts = [_BATCH_PREFIX]
    for frame in frames:
        parts.append(_LENGTH.pack(len(frame)))
        parts.append(frame)
    return b"".join(parts)


def unpack(message: bytes) -> list[bytes]:
    """The frames of one gRPC message that is not the close marker."""
    first = message[0]
    if first > _BATCH:
        return [message]
    if first == _ESCAPE:
        return [message[1:]]
    frames = []
    view = memoryview(message)
    offset, end = 1, len(message)
    while offset < end:
        if offset + 4 > end:
            raise ProtocolError("a batch of frames ends inside a length")
        (size,) = _LENGTH.unpack_from(message, offset)
        offset += 4
        if offset + size > end:
            raise ProtocolError("a batch of frames ends inside a frame")
        frames.append(bytes(view[offset : offset + size]))
        offset += size
    return frames


class FrameQueue:
    """First in, first out, as a ``deque`` of frames, in a list read from an index: an empty
    one costs 56 bytes where a ``deque`` costs ~600, and a gateway keeps two per link."""

    __slots__ = ("_items", "_head")

    def __init__(self) -> None:
        self._items: list[bytes] = []
        self._head = 0

    def __len__(self) -> int:
        return len(self._items) - self._head

    def append(self, frame: bytes) -> None:
        self._items.append(frame)

    def extend(self, frames: list[bytes]) -> None:
        self._items.extend(frames)

    def first(self) -> bytes:
        return self._items[self._head]

    def popleft(self) -> bytes:
        items, head = self._items, self._head
        frame = items[head]
        if head + 1 == len(items):
            self.clear()  # empty again: give the list's memory back
        else:
            items[head] = b""  # let go of the frame now
            self._head = head + 1
        return frame

    def clear(self) -> None:
        self._items = []
        self._head = 0


class GrpcAttribute(TypedAttributeSet):
    """What a dialled gRPC link offers beyond :class:`ConnectionAttribute`."""

    #: the channel's connectivity state, for the channel-state probe
    channel_state: ChannelStateWatch = typed_attribute()


class GrpcConnection(Connection):
    """Frames over one ``/easyremote.v1.Gateway/Link`` stream.

    grpc.aio cancels the whole RPC when a task awaiting one of its reads or writes is
    cancelled, and refuses overlapping writes. So one reader task does every read, and
    ``receive`` takes the frames it read (after :meth:`deliver_frames`, the reader hands each
    to the link's handler itself); ``send`` queues frames and the connection
    writes them itself, one gRPC write at a time, packing the frames waiting together into
    one message (:meth:`_write_next`). A caller may be cancelled at any await without
    harming the link.

    The reader is the event loop's own task (grpc.aio runs on asyncio only), started by
    :meth:`start_io` and owned by the connection: no cancel scope of its user can cut a read
    short and so kill the RPC; only :meth:`reap`, which whoever opened the connection always
    awaits, ends it and the write in flight, once the RPC has ended (or after
    ``CLOSE_TIMEOUT``). Being a plain loop task, not an anyio task group's, it costs a gateway
    a few KiB less per link; writes need no task at all.
    """

    def __init__(self, peer: str, max_message_size: int, peer_max_message_size: int | None = None) -> None:
        self.peer = peer
        self._max = max_message_size  # the largest frame this end accepts
        self._send_max = min(max_message_size, peer_max_message_size or max_message_size)
        # Frames the reader delivered, until ``receive`` takes them; a full buffer holds the
        # reader back (and gRPC flow control the peer). Once they are taken, ``_end`` says why
        # the link ended, if it did.
        self._received = FrameQueue()
        self._receiver_waits: asyncio.Future[None] | None = None  # receive() waits for a frame
        self._handler: Callable[[bytes], None] | None = None  # deliver_frames: who takes each frame
        self._reader_waits: asyncio.Future[None] | None = None  # the reader waits for room
        self._end: Callable[[], BaseException] | None = None
        self._outbox = FrameQueue()
        self._queued_bytes = 0
        self._drained: asyncio.Future[None] | None = None
        self._closing = False  # no more sends; the writes end once the outbox is empty
        self._closed = False  # closed by this side: sends and receives fail
        self._lost: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start_io
        self._reader: asyncio.Task[None] | None = None
        # The gRPC write in flight: what it waits for, and who waits for the writes to end.
        self._writing = False
        self._bursts = False  # frames come in bursts: each waits for the loop's next turn
        # Frames received less frames sent: beyond one either way, more than one call (or a
        # stream) is in flight on the link, and each write waits for the others of its turn.
        # Frames that go one way only (a stream's items) leave it off for good: the link then
        # writes every frame a turn later, as a busy one does.
        self._balance = 0
        self._write_soon: asyncio.Handle | None = None  # that turn's write, while it waits
        self._kept: asyncio.TimerHandle | None = None  # holds the last large message written
        self._write_waits: asyncio.Future[Any] | None = None
        self._writes_over: asyncio.Future[None] | None = None  # _flush() and reap() wait on it
        self._write_failure: BaseException | None = None  # a write failed: the reader reports it
        self._reaped = False  # reap() has begun: no write starts any more

    def start_io(self) -> None:
        """Start the reader (and the writes of frames queued so far); they end with the RPC or
        when :meth:`reap` cancels them."""
        if self._loop is not None:
            raise RuntimeError("start_io() runs once")
        self._loop = asyncio.get_running_loop()
        if self._reaped:  # reaped before it started
            return
        self._reader = self._loop.create_task(self._guarded(self._read_loop),
                                              name=f"easyremote-grpc-reader {self.peer}")
        self._write_next()

    async def _guarded(self, operation: Callable[[], Awaitable[None]]) -> None:
        try:
            await operation()
        except Exception as exc:  # beyond the failures the reader reports itself
            logger.error("gRPC link to %s: its reader failed", self.peer, exc_info=exc)
            self._fail(ConnectionLostError(f"link to {self.peer} broke: {exc!r}"))

    # -- what each end provides -------------------------------------------------

    @abstractmethod
    def _read_op(self) -> Awaitable[Any]:
        """One gRPC read: bytes, or ``grpc.aio.EOF`` after the peer's orderly close."""

    @abstractmethod
    def _write_op(self, message: bytes) -> Coroutine[Any, Any, None]:
        """One gRPC write (a coroutine: the connection runs it, see :meth:`_step_write`)."""

    @abstractmethod
    async def _end_of(self, message: Any) -> Callable[[], BaseException] | None:
        """The link's end when ``message`` is EOF or the close marker, else ``None``."""

    @abstractmethod
    async def _describe_failure(self, exc: BaseException | None) -> str:
        """Why the link broke, in words, given the failed operation's exception."""

    async def _after_writes(self) -> None:
        """Run by an orderly close once every queued frame is written."""

    # -- Connection -------------------------------------------------------------

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {
            ConnectionAttribute.send_nowait: lambda: self.send_nowait,
            ConnectionAttribute.buffered_bytes: lambda: self.buffered_bytes,
            ConnectionAttribute.deliver_frames: lambda: self.deliver_frames,
        }

    def buffered_bytes(self) -> int:
        """Bytes queued and not yet handed to gRPC."""
        return self._queued_bytes

    def send_nowait(self, frame: bytes) -> None:
        """Queue one frame, and write it at once when no write is in flight; raises
        ``MessageTooLargeError`` or ``ConnectionLostError``."""
        if len(frame) > self._send_max:
            whose = "" if self._send_max == self._max else "the peer's "
            raise MessageTooLargeError(
                f"frame of {len(frame)} bytes exceeds {whose}max_message_size ({self._send_max})")
        if self._closing or self._lost is not None:
            raise self._unusable()
        self._outbox.append(frame)
        self._queued_bytes += len(frame)
        balance = self._balance
        self._balance = balance - 1
        if self._writing:
            self._bursts = True  # it waits behind a write: the next frame waits for the burst
        elif self._write_soon is None:
            if (self._bursts or not -1 <= balance <= 1) and self._loop is not None:
                # At the loop's next turn, after the tasks already woken queued their frames
                # too: they go out in one message (each gRPC write costs a completion).
                self._write_soon = self._loop.call_soon(self._write_burst)
            else:  # one frame alone, as a sequential call's: written now, not a turn later
                self._write_next()

    def _write_burst(self) -> None:
        """The write of the frames queued during one turn; one frame alone ends the bursts."""
        self._write_soon = None
        if len(self._outbox) == 1:
            self._bursts = False
        self._write_next()

    def deliver_frames(self, handler: Callable[[bytes], None]) -> None:
        """See ``ConnectionAttribute.deliver_frames``: the reader hands each frame to ``handler``
        as it reads it, and no task waiting in ``receive`` is woken for it."""
        self._handler = handler
        self._deliver(self._received)
        if self._reader_waits is not None:
            _wake(self._reader_waits)

    def _deliver(self, frames: FrameQueue | list[bytes]) -> None:
        """Hand ``frames`` to the handler in order; what it raises ends the delivery (``receive``
        raises it), and frames after that are dropped."""
        handler = self._handler
        if handler is None:
            return
        try:
            if isinstance(frames, FrameQueue):
                while frames:
                    handler(frames.popleft())
            else:
                for frame in frames:
                    handler(frame)
        except Exception as exc:
            failure = exc
            self._handler = None
            self._received.clear()
            self._finish(lambda: failure)

    async def send(self, frame: bytes) -> None:
        self.send_nowait(frame)
        while self._queued_bytes > SEND_HIGH_WATER and self._lost is None:
            self._drained = self._drained or asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)

    async def receive(self) -> bytes:
        received = self._received
        while not received:  # a frame already delivered is taken without waiting (see the tcp transport)
            if self._end is not None:
                raise self._end()
            waits = self._receiver_waits = (self._loop or asyncio.get_running_loop()).create_future()
            try:
                await waits
            finally:
                self._receiver_waits = None
        frame = received.popleft()
        if self._reader_waits is not None and len(received) < RECEIVE_BUFFER:
            _wake(self._reader_waits)
        return frame

    def _unusable(self) -> ConnectionLostError:
        if self._closed or self._lost is None:
            return ConnectionLostError("connection is closed")
        return ConnectionLostError(self._lost)

    # -- the reader ---------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while self._end is None:
                message = await self._read_op()
                if message is grpc.aio.EOF or not message:
                    end = await self._end_of(message)
                    if end is not None:
                        self._finish(end)
                        return
                    continue
                frames = unpack(message)
                for frame in frames:
                    if len(frame) > self._max:
                        raise MessageTooLargeError(
                            f"{self.peer} sent a frame of {len(frame)} bytes, above max_message_size ({self._max}); "
                            "the link is closed"
                        )
                # The whole batch at once: the link's receiver takes it without a yield per frame.
                self._balance += len(frames)
                if self._handler is not None:
                    self._deliver(frames)
                    continue
                self._received.extend(frames)
                if self._receiver_waits is not None:
                    _wake(self._receiver_waits)
                while len(self._received) >= RECEIVE_BUFFER and not self._closed and self._write_failure is None:
                    waits = self._reader_waits = asyncio.get_running_loop().create_future()
                    try:
                        await waits  # until receive() takes frames
                    finally:
                        self._reader_waits = None
                if self._closed:
                    return  # this end closed the link: nobody will take frames any more
                if self._write_failure is not None:  # it waited for room while the RPC ended
                    self._fail(await self._lose(self._write_failure))
                    return
        except (MessageTooLargeError, ProtocolError) as exc:
            self._mark_lost(str(exc))
            self._fail(exc)
            self._abort_after_protocol_error(str(exc))
        except GRPC_FAILURES as exc:
            self._fail(await self._lose(exc))
        except anyio.get_cancelled_exc_class():
            self._fail(self._cancelled())
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # reap() cancelled the reader
                raise
            # grpc.aio raises CancelledError from a read of a cancelled RPC: the link ended.
            # Raised on, it would be kept in a reference cycle with anyio's frames, holding the
            # call (and so the closed channel) until a collection.

    def _finish(self, end: Callable[[], BaseException]) -> None:
        """Frames already delivered are still received; then ``end()`` is raised, every time."""
        if self._end is None:
            self._end = end
            if self._receiver_waits is not None:
                _wake(self._receiver_waits)

    # -- the writes ----------------------------------------------------------------------

    def _write_next(self) -> None:
        """Start the next gRPC write, if frames wait and none is in flight; once nothing is left
        to write (or the writes failed), wake whoever waits for the writes to end."""
        if self._writing:
            return
        if self._may_write():
            self._writing = True
            message = self._take_message()
            if len(message) >= KEEP_WRITTEN_BYTES:
                self._keep(message)
            try:
                operation = self._write_op(message)
            except ConnectionLostError as exc:  # the call is let go of already
                self._writing = False
                self._write_failed(exc)
                return
            self._step_write(operation)
            return
        over = self._writes_over
        if over is not None and not over.done():
            over.set_result(None)

    def _step_write(self, operation: Coroutine[Any, Any, None], _: object = None) -> None:
        """Run the write ``operation`` up to its next wait (a gRPC completion), and on from there
        each time what it waits for is done, as a task would, less a task and a loop turn.

        Its first step runs in ``send_nowait`` itself, so a frame is handed to gRPC core (which
        writes it to the socket) before the sender yields.
        """
        self._write_waits = None
        try:
            waits = operation.send(None)
        except StopIteration:
            self._writing = False
            self._write_next()
            return
        except (*GRPC_FAILURES, asyncio.CancelledError) as exc:  # grpc.aio: a cancelled RPC's write
            self._writing = False
            self._write_failed(exc)
            return
        except Exception as exc:
            self._writing = False
            logger.error("gRPC link to %s: a write failed", self.peer, exc_info=exc)
            self._write_failed(ConnectionLostError(f"link to {self.peer} broke: {exc!r}"))
            return
        if getattr(waits, "_asyncio_future_blocking", None):  # an asyncio future, as awaited
            waits._asyncio_future_blocking = False
            self._write_waits = waits
            waits.add_done_callback(functools.partial(self._step_write, operation))
        elif waits is None:  # a bare yield: go on at the next turn
            (self._loop or asyncio.get_running_loop()).call_soon(self._step_write, operation)
        else:  # nothing grpc.aio does; a task would refuse it too
            operation.close()
            self._writing = False
            self._write_failed(ConnectionLostError(f"link to {self.peer} broke: a gRPC write yielded {waits!r}"))

    def _write_failed(self, exc: BaseException) -> None:
        """A write failed, so the RPC is over: nothing more is written. The reader, which sees
        the RPC end too, says why (with this failure, if it waits for room)."""
        self._write_failure = exc
        self._closing = True
        self._outbox.clear()
        self._queued_bytes = 0
        self._wake_senders()
        if self._reader is None or self._reader.done():
            self._finish(lambda: ConnectionLostError(self._lost or f"link to {self.peer} broke"))
        elif self._reader_waits is not None:
            _wake(self._reader_waits)
        self._write_next()  # wakes whoever waits for the writes to end

    def _keep(self, message: bytes) -> None:
        """Keep ``message``, instead of the one kept so far, for KEEP_WRITTEN seconds (a timer
        holds it, as its argument)."""
        self._let_go()
        if self._loop is not None:
            self._kept = self._loop.call_later(KEEP_WRITTEN, self._let_go, message)

    def _let_go(self, _message: bytes | None = None) -> None:
        if self._kept is not None:
            self._kept.cancel()  # which lets go of its argument
            self._kept = None

    def _may_write(self) -> bool:
        """Frames wait and may be written (after ``reap()`` or a failed write, none is)."""
        return bool(self._outbox) and self._loop is not None and not self._reaped and self._write_failure is None

    async def _writes_ended(self) -> None:
        """Write what is queued, and wait until no write is in flight and none may start."""
        if self._write_soon is not None:
            self._write_soon.cancel()
            self._write_soon = None
        self._write_next()
        if not self._writing and not self._may_write():
            return
        over = self._writes_over
        if over is None or over.done():
            over = self._writes_over = (self._loop or asyncio.get_running_loop()).create_future()
        await asyncio.wait((over,))  # a waiter cancelled here leaves the writes to reap()

    def _take_message(self) -> bytes:
        """Pop the frames that go out in the next message and pack them."""
        outbox = self._outbox
        frame = outbox.popleft()
        frames = [frame]
        taken = size = len(frame)
        while outbox and size + 4 + len(outbox.first()) <= BATCH_BYTES:
            frame = outbox.popleft()
            frames.append(frame)
            taken += len(frame)
            size += 4 + len(frame)
        self._queued_bytes -= taken
        if self._drained is not None and self._queued_bytes <= SEND_HIGH_WATER:
            self._wake_senders()
        return pack(frames)

    def _wake_senders(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        """The link broke: frames read so far are still received, then ``exc``."""
        self._closing = True
        self._finish(lambda: _copy(exc))

    def _abort_after_protocol_error(self, reason: str) -> None:
        """End the RPC after the peer broke the framing rules."""

    async def _lose(self, exc: BaseException | None) -> ConnectionLostError:
        if self._closed:
            return ConnectionLostError("connection is closed")
        if self._lost is None:
            self._lost = str(link_broke(self.peer, await self._describe_failure(exc)))
            logger.debug("%s", self._lost)
        return ConnectionLostError(self._lost)

    def _cancelled(self) -> ConnectionLostError:
        """What the link's users see once :meth:`reap` cancelled a read or a write."""
        if self._closed:
            return ConnectionLostError("connection is closed")
        self._mark_lost("the link's reads and writes were cancelled")
        return ConnectionLostError(self._lost or "connection is closed")

    def _mark_lost(self, reason: str) -> None:
        if self._lost is None:
            self._lost = f"link to {self.peer} broke: {reason}"
            logger.debug("%s", self._lost)

    def _close_locally(self) -> None:
        self._closed = self._closing = True
        # Frames not yet received are dropped; from now on receive() says the link is closed.
        self._end = lambda: ConnectionLostError("connection is closed")
        self._received.clear()
        for waits in (self._receiver_waits, self._reader_waits):
            if waits is not None:
                _wake(waits)
        self._let_go()

    async def _flush(self) -> None:
        """Write what is queued, then the orderly close."""
        self._closing = True
        await self._writes_ended()
        if self._lost is None and self._write_failure is None and self._loop is not None:  # aclose(): once
            try:
                await self._after_writes()
            except GRPC_FAILURES as exc:
                self._fail(await self._lose(exc))

    async def reap(self) -> None:
        """Wait for the reader and the write in flight to end with the call, cancelling stragglers.

        An operation ended by the call's own end completes inside gRPC core too; one
        cancelled here leaves a core completion behind that may arrive late.
        """
        self._close_locally()
        self._reaped = True  # start_io, if it ever runs, starts nothing; no write starts
        reader = self._reader
        if (reader is None or reader.done()) and not self._writing:
            return
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CLOSE_TIMEOUT):
                await self._writes_ended()
                if reader is not None:
                    await asyncio.wait((reader,))
            if self._writing or (reader is not None and not reader.done()):
                if reader is not None:
                    reader.cancel()
                if self._write_waits is not None:
                    self._write_waits.cancel()  # the write goes on with CancelledError, as a task's would
                await self._writes_ended()
                if reader is not None:
                    await asyncio.wait((reader,))


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _copy(exc: BaseException) -> BaseException:
    """A fresh exception like ``exc``, so that raising it again does not grow its traceback."""
    fresh = type(exc)(*exc.args)
    fresh.__cause__ = exc.__cause__
    return fresh


class ClientConnection(GrpcConnection):
    """The dialling end: a stream call on a channel this connection owns.

    Closing it lets go of the call before it closes the channel: gRPC core keeps a closed
    channel (its TCP connection and its state watches) alive for as long as a call of it
    exists, and the reader, once cancelled, holds the call through its exception's
    traceback. A state watch that outlives the event loop that started it is reported on
    another loop of the process as ``RuntimeError: Event loop is closed``.
    """

    def __init__(self, channel: ChannelStateWatch, call: grpc.aio.StreamStreamCall, peer: str,
                 max_message_size: int, peer_max_message_size: int | None = None) -> None:
        super().__init__(peer, max_message_size, peer_max_message_size)
        self.channel = channel.channel
        self.channel_state = channel  # what the channel-state probe waits on
        self._call_or_none: grpc.aio.StreamStreamCall | None = call
        self.start_io()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {**super().extra_attributes, GrpcAttribute.channel_state: lambda: self.channel_state}

    @property
    def _call(self) -> grpc.aio.StreamStreamCall:
        call = self._call_or_none
        if call is None:
            raise ConnectionLostError("connection is closed")
        return call

    def _read_op(self) -> Awaitable[Any]:
        return self._call.read()

    def _write_op(self, message: bytes) -> Coroutine[Any, Any, None]:
        return self._call.write(message)

    async def _end_of(self, message: Any) -> Callable[[], BaseException] | None:
        if message is grpc.aio.EOF:  # the gateway ended the RPC with status OK
            return anyio.EndOfStream
        raise ProtocolError("the gateway sent an empty message")

    async def _describe_failure(self, exc: BaseException | None) -> str:
        if not isinstance(exc, grpc.aio.AioRpcError) and self._call.done() and not self._call.cancelled():
            return describe_status(await self._call.code(), await self._call.details())
        if exc is None:
            return "the call was cancelled"
        return describe_failure(exc)

    async def _after_writes(self) -> None:
        if self._closed and not self._call.done():  # an orderly close: tell the gateway
            await self._call.write(CLOSE_MARKER)
            await self._call.done_writing()

    def _abort_after_protocol_error(self, reason: str) -> None:
        self._call.cancel()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CLOSE_TIMEOUT):
                await self._flush()
                if self._lost is None and not self._call.done():
                    await self._call.code()  # the gateway ends the RPC
            await self._release()

    async def drop(self) -> None:
        """Cancel the RPC and close the channel at once: the link is dead, nobody answers."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._release()

    async def _release(self) -> None:
        """End the call, let go of it and of the reader and the writes, then close the channel."""
        self._close_locally()
        self._call.cancel()
        await self.reap()
        self._call_or_none = None
        await self.channel_state.close()


class ServerConnection(GrpcConnection):
    """The accepting end: one Link RPC, ended by :meth:`aclose` (OK) or :meth:`abort`.

    Whoever accepted the connection starts its reader and writes (:meth:`start_io`) beside
    its handler and awaits
    :meth:`reap` once the connection is closed; :meth:`run_rpc` holds the RPC open.
    """

    def __init__(self, context: grpc.aio.ServicerContext, max_message_size: int,
                 peer_max_message_size: int | None = None) -> None:
        super().__init__(readable_peer(context.peer()), max_message_size, peer_max_message_size)
        self._context = context
        # Done once the connection is closed: the RPC's handler then returns (a future, not
        # an event: a gateway keeps one per link).
        self._finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._abort_reason: str | None = None
        self._rpc_task: asyncio.Task[Any] | None = None

    def _read_op(self) -> Awaitable[Any]:
        return self._context.read()

    def _write_op(self, message: bytes) -> Coroutine[Any, Any, None]:
        return self._context.write(message)

    async def _end_of(self, message: Any) -> Callable[[], BaseException] | None:
        if message is grpc.aio.EOF:  # no close marker: the RPC broke
            exc = await self._lose(None)
            return lambda: _copy(exc)
        return anyio.EndOfStream  # the close marker

    async def _describe_failure(self, exc: BaseException | None) -> str:
        return describe_failure(exc)

    def _abort_after_protocol_error(self, reason: str) -> None:
        self.abort(reason)

    async def aclose(self) -> None:
        """End the RPC with status OK once queued frames are written: the peer sees an orderly close."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
            await self._flush()
        self._close_locally()
        _wake(self._finished)

    async def drop(self) -> None:
        """End the RPC at once with status UNAVAILABLE; frames still queued are not written.

        A write that the peer's flow control holds back (it stopped reading) would hold the
        status back too, and gRPC would log the failed status as an error once the peer goes.
        Then the RPC's handler is cancelled instead, and the stream is reset as soon as gRPC
        lets go of the write.
        """
        self._closed = True
        writing = self._writing
        self.abort("the gateway dropped the link")
        if writing and self._rpc_task is not None and not self._rpc_task.done():
            self._rpc_task.cancel()

    def abort(self, reason: str) -> None:
        """End the RPC with status UNAVAILABLE: the peer sees a broken link."""
        if self._abort_reason is not None or (self._finished.done() and not self._finished.cancelled()):
            return
        self._abort_reason = reason
        self._close_locally()
        _wake(self._finished)

    async def run_rpc(self) -> None:
        """Hold the RPC open until the connection is closed; runs in gRPC's handler task."""
        self._rpc_task = asyncio.current_task()
        try:
            await self._finished  # cancelled with the handler if the RPC dies
        except asyncio.CancelledError:  # gRPC cancels the handler when the RPC dies
            self._mark_lost("the peer went away (RPC cancelled)")
            raise  # the reader and the write in flight fail by themselves as the RPC ends
        if self._abort_reason is not None:
            self._context.set_code(grpc.StatusCode.UNAVAILABLE)
            self._context.set_details(self._abort_reason)


def readable_peer(peer: str) -> str:
    """``ipv4:127.0.0.1:5000`` -> ``127.0.0.1:5000``; ``ipv6:%5B::1%5D:5000`` -> ``[::1]:5000``."""
    peer = unquote(peer or "")
    for prefix in ("ipv4:", "ipv6:"):
        if peer.startswith(prefix):
            return peer[len(prefix):]
    return peer or "unknown"
