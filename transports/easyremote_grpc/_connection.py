"""The two ends of a gRPC link: a client stream call and a server RPC, as :class:`Connection`."""

from __future__ import annotations

import asyncio
import logging
from abc import abstractmethod
from collections.abc import Awaitable
from typing import Any
from urllib.parse import unquote

import anyio
import grpc
import grpc.aio

from easyremote_core import Connection, ConnectionLostError, MessageTooLargeError

logger = logging.getLogger("easyremote.grpc")

# How long an orderly close from the dialling side waits for the gateway to end the
# RPC before it cancels it.
CLOSE_TIMEOUT = 1.0

# A server cannot tell the dialling peer's half-close from a read that failed (gRPC
# Python reports both as EOF). So the dialling peer announces an orderly close with an
# empty message first, and escapes its frames that are empty or begin with a zero byte
# (a serialized envelope never does) by prefixing a zero byte.
CLOSE_MARKER = b""
_ESCAPE = b"\x00"

_GrpcFailure = (grpc.RpcError, grpc.aio.BaseError, asyncio.InvalidStateError)


class GrpcConnection(Connection):
    """Frames over one ``/easyremote.v1.Gateway/Link`` stream.

    grpc.aio cancels the whole RPC when a task awaiting one of its reads or writes is
    cancelled. A timeout around ``receive`` must not end the link, so every read and
    write runs as its own task owned by this connection: the caller waits for it
    and may be cancelled, the operation goes on, and ``aclose`` reaps what is left.
    One write at a time: gRPC refuses overlapping writes on a call.
    """

    def __init__(self, peer: str, max_message_size: int) -> None:
        self.peer = peer
        self._max = max_message_size
        self._send_lock = anyio.Lock()
        self._receive_lock = anyio.Lock()
        self._pending_read: asyncio.Task[Any] | None = None
        self._pending_write: asyncio.Task[Any] | None = None
        self._closed = False
        self._eof = False
        self._lost: str | None = None

    # -- what each end provides -------------------------------------------------

    @abstractmethod
    def _read_op(self) -> Awaitable[Any]:
        """One gRPC read: bytes, or ``grpc.aio.EOF`` after the peer's orderly close."""

    @abstractmethod
    def _write_op(self, frame: bytes) -> Awaitable[None]:
        """One gRPC write."""

    @abstractmethod
    async def _frame_of(self, message: Any) -> bytes:
        """The frame a read delivered; raises ``EndOfStream`` or ``ConnectionLostError``."""

    @abstractmethod
    async def _describe_failure(self, exc: BaseException | None) -> str:
        """Why the link broke, in words, given the failed operation's exception."""

    # -- Connection -------------------------------------------------------------

    async def send(self, frame: bytes) -> None:
        if len(frame) > self._max:
            raise MessageTooLargeError(f"frame of {len(frame)} bytes exceeds max_message_size ({self._max})")
        async with self._send_lock:
            if self._pending_write is not None:  # a write whose sender was cancelled
                await self._finish_write(self._pending_write)
            self._raise_if_unusable()
            task = self._pending_write = _spawn(self._write_op(frame))
            await self._finish_write(task)

    async def _finish_write(self, task: asyncio.Task[Any]) -> None:
        await asyncio.wait({task})
        self._pending_write = None
        if task.cancelled() or task.exception() is not None:
            raise await self._lose(None if task.cancelled() else task.exception())

    async def receive(self) -> bytes:
        async with self._receive_lock:
            if self._eof:
                raise anyio.EndOfStream
            if self._pending_read is None:
                self._raise_if_unusable()
                self._pending_read = _spawn(self._read_op())
            task = self._pending_read
            await asyncio.wait({task})
            self._pending_read = None
            if task.cancelled() or task.exception() is not None:
                raise await self._lose(None if task.cancelled() else task.exception())
            return await self._frame_of(task.result())

    def _raise_if_unusable(self) -> None:
        if self._closed:
            raise ConnectionLostError("connection is closed")
        if self._lost is not None:
            raise ConnectionLostError(self._lost)

    async def _lose(self, exc: BaseException | None) -> ConnectionLostError:
        if self._closed:
            return ConnectionLostError("connection is closed")
        if self._lost is None:
            self._lost = f"link to {self.peer} broke: {await self._describe_failure(exc)}"
            logger.debug("%s", self._lost)
        return ConnectionLostError(self._lost)

    def _mark_lost(self, reason: str) -> None:
        if self._lost is None:
            self._lost = f"link to {self.peer} broke: {reason}"
            logger.debug("%s", self._lost)

    async def _reap(self) -> None:
        """Wait for what still runs on the call after it was ended, cancelling stragglers.

        An operation ended by the call's own end completes inside gRPC core too; one
        cancelled here leaves a core completion behind that may arrive late.
        """
        tasks = {t for t in (self._pending_read, self._pending_write) if t is not None and not t.done()}
        if tasks:
            _, stragglers = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
            for task in stragglers:
                task.cancel()
            if stragglers:
                await asyncio.wait(stragglers)


def _spawn(operation: Awaitable[Any]) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(operation)
    task.add_done_callback(_retrieve_outcome)
    return task


def _retrieve_outcome(task: asyncio.Task[Any]) -> None:
    """Mark a failed operation's exception as seen: a cancelled sender never awaits it."""
    if not task.cancelled():
        task.exception()


class ClientConnection(GrpcConnection):
    """The dialling end: a stream call on a channel this connection owns."""

    def __init__(self, channel: grpc.aio.Channel, call: grpc.aio.StreamStreamCall, peer: str,
                 max_message_size: int) -> None:
        super().__init__(peer, max_message_size)
        self.channel = channel
        self._call = call

    def _read_op(self) -> Awaitable[Any]:
        return self._call.read()

    def _write_op(self, frame: bytes) -> Awaitable[None]:
        if not frame or frame[:1] == _ESCAPE:
            frame = _ESCAPE + frame
        return self._call.write(frame)

    async def _frame_of(self, message: Any) -> bytes:
        if message is grpc.aio.EOF:  # the gateway ended the RPC with status OK
            self._eof = True
            raise anyio.EndOfStream
        return bytes(message)

    async def _describe_failure(self, exc: BaseException | None) -> str:
        if isinstance(exc, grpc.aio.AioRpcError):
            return describe_rpc_error(exc.code(), exc.details())
        if self._call.done() and not self._call.cancelled():
            return describe_rpc_error(await self._call.code(), await self._call.details())
        return f"{type(exc).__name__}: {exc}" if exc is not None else "the call was cancelled"

    async def aclose(self) -> None:
        if self._closed:
            return
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CLOSE_TIMEOUT):
                async with self._send_lock:
                    if self._pending_write is not None:
                        await asyncio.wait({self._pending_write})
                    if self._lost is None and not self._call.done():
                        try:
                            await self._call.write(CLOSE_MARKER)
                            await self._call.done_writing()
                        except _GrpcFailure:
                            pass
                        else:
                            await self._call.code()  # the gateway ends the RPC
            self._closed = True
            self._call.cancel()
            await self._reap()
            await self.channel.close(grace=None)


class ServerConnection(GrpcConnection):
    """The accepting end: one Link RPC, ended by :meth:`aclose` (OK) or :meth:`abort`."""

    def __init__(self, context: grpc.aio.ServicerContext, max_message_size: int) -> None:
        super().__init__(readable_peer(context.peer()), max_message_size)
        self._context = context
        self.finished = anyio.Event()
        self._abort_reason: str | None = None

    def _read_op(self) -> Awaitable[Any]:
        return self._context.read()

    def _write_op(self, frame: bytes) -> Awaitable[None]:
        return self._context.write(frame)

    async def _frame_of(self, message: Any) -> bytes:
        if message is grpc.aio.EOF:  # no close marker: the RPC broke
            raise await self._lose(None)
        if message == CLOSE_MARKER:
            self._eof = True
            raise anyio.EndOfStream
        return message[1:] if message[:1] == _ESCAPE else bytes(message)

    async def _describe_failure(self, exc: BaseException | None) -> str:
        if exc is None or isinstance(exc, asyncio.CancelledError):
            return "the peer went away without closing the link"
        return f"{type(exc).__name__}: {exc}"

    async def aclose(self) -> None:
        """End the RPC with status OK: the peer sees an orderly close."""
        if self._closed:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
            async with self._send_lock:
                if self._pending_write is not None:
                    await asyncio.wait({self._pending_write})
        self._closed = True
        self.finished.set()

    def abort(self, reason: str) -> None:
        """End the RPC with status UNAVAILABLE: the peer sees a broken link."""
        if self._closed:
            return
        self._closed = True
        self._abort_reason = reason
        self.finished.set()

    async def run_rpc(self) -> None:
        """Hold the RPC open until the connection is closed; runs in gRPC's handler task."""
        try:
            await self.finished.wait()
        except asyncio.CancelledError:  # gRPC cancels the handler when the RPC dies
            self._mark_lost("the peer went away (RPC cancelled)")
            raise  # reads and writes still pending fail by themselves as the RPC ends
        if self._abort_reason is not None:
            self._context.set_code(grpc.StatusCode.UNAVAILABLE)
            self._context.set_details(self._abort_reason)


def describe_rpc_error(code: grpc.StatusCode | None, details: str | None) -> str:
    name = code.name if code is not None else "UNKNOWN"
    text = f"{name}: {details}" if details else name
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and details and "larger than max" in details:
        text += " (a frame exceeded the receiver's max_message_size)"
    return text


def readable_peer(peer: str) -> str:
    """``ipv4:127.0.0.1:5000`` -> ``127.0.0.1:5000``; ``ipv6:%5B::1%5D:5000`` -> ``[::1]:5000``."""
    peer = unquote(peer or "")
    for prefix in ("ipv4:", "ipv6:"):
        if peer.startswith(prefix):
            return peer[len(prefix):]
    return peer or "unknown"
