"""A running session over one connection: framing, heartbeats, probes, an outbound queue."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from ._backend import TaskSet, clock
from ._connection import Connection, ConnectionAttribute
from ._errors import ConnectionLostError, EasyRemoteError, MessageTooLargeError, ProtocolError
from ._flag import Flag
from ._heartbeat import SilenceWatch
from ._logs import Quieter, capped
from ._probes import HealthProbe, LinkDead, LinkHealth
from ._protocol import Attachment, decode_frame, encode, pb

logger = capped(logging.getLogger("easyremote.link"))

#: Called with each frame's envelope and its attachment (``None`` when its payload, if any, is inline).
FrameHandler = Callable[[pb.Envelope, Attachment | None], None]
#: How long ``Link.close`` lets queued frames drain before it ends the link anyway.
CLOSE_FLUSH_TIMEOUT = 2.0


class Link:
    """Carries envelopes over a connection until it ends; ``run`` returns why it ended.

    Every frame from the peer refreshes ``health.last_received``. Heartbeats from
    the peer are answered here; other frames go to ``on_frame``, which must not
    block (it queues sends and starts tasks with ``start_soon``).
    """

    def __init__(
        self,
        connection: Connection,
        *,
        on_frame: FrameHandler,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        health_check_interval: float,
        probes: Sequence[HealthProbe],
        send_heartbeats: bool,
        peer_name: str,
        many_peers: bool = False,
        max_buffer: float = math.inf,
        quiet: Quieter | None = None,
        on_end: Callable[[str], None] | None = None,
        silence_watch: SilenceWatch | None = None,
    ) -> None:
        self.connection = connection
        self.health = LinkHealth(
            connection=connection,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            health_check_interval=health_check_interval,
            last_received=anyio.current_time(),
            peer_name=peer_name,
            many_peers=many_peers,
        )
        self._on_frame = on_frame
        self._quiet = quiet  # a gateway's: what its peers cause is logged rate-limited
        self._probes = list(probes)
        self._silence_watch = silence_watch  # shared by many links: their heartbeat timeout, without a task each
        self._send_heartbeats = send_heartbeats
        self._outbox_bytes = 0  # bytes in the outbox, not yet given to the connection
        self.max_buffer = max_buffer  # past this many bytes queued towards the peer, it is cut off
        # A connection that queues frames itself (``send_nowait``) takes them straight from
        # ``send``; one that writes several frames at once (``send_many``) gets every frame
        # queued while it wrote the previous ones. See ``ConnectionAttribute``.
        self._send_nowait: Callable[[bytes], None] | None = connection.extra(ConnectionAttribute.send_nowait, None)
        self._send_many: Callable[[list[bytes]], Awaitable[None]] | None = connection.extra(
            ConnectionAttribute.send_many, None)
        self._buffered: Callable[[], int] = connection.extra(ConnectionAttribute.buffered_bytes, _nothing)
        # The outbox, for a connection that does not queue frames itself.
        self._outbox_in, self._outbox = (anyio.create_memory_object_stream[bytes](math.inf)
                                         if self._send_nowait is None else _NO_OUTBOX)
        self._scope: anyio.CancelScope | None = None  # the link's, while it runs
        self._now: Callable[[], float] = anyio.current_time  # the loop's clock, once running
        self._tasks = TaskSet(self._task_failed)  # what start_soon runs
        self._heartbeat_seq = 0
        self.last_received_wall = time.time()  # wall clock of the last frame, for people reading status
        self.end_reason = ""
        self.ended = Flag()
        self.on_end = on_end  # called once, as soon as the link has ended
        self._orderly = False

    # -- sending -------------------------------------------------------------------------

    def send(self, envelope: pb.Envelope, attachment: Attachment | None = None) -> None:
        """Queue one envelope (with the payload ``attachment`` after it); it is sent in order. Never blocks.

        A peer that lets more than ``max_buffer`` bytes pile up towards it (it stopped
        reading) is cut off: its link ends and what was queued for it is dropped.
        """
        self.send_frame(encode(envelope, attachment))

    def send_frame(self, frame: bytes) -> None:
        """Queue one frame already encoded (one received, forwarded as it came); as :meth:`send`."""
        if self._send_nowait is not None:
            try:
                self._send_nowait(frame)
            except MessageTooLargeError as exc:  # senders check sizes first; never let one frame end the link
                logger.error("Dropped a frame to %s: %s", self.health.peer_name, exc)
                return
            except ConnectionLostError:
                return  # the link has ended (its receiver reports why); calls are settled by their owners
        else:
            try:
                self._outbox_in.send_nowait(frame)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return  # the link has ended; its calls are settled by whoever owns them
            self._outbox_bytes += len(frame)
        if self._outbox_bytes + self._buffered() > self.max_buffer:
            self._cut_off()

    @property
    def queued_bytes(self) -> int:
        """Bytes queued towards the peer and not yet written."""
        return self._outbox_bytes + self._buffered()

    def _cut_off(self) -> None:
        if self.end_reason:
            return
        queued = self.queued_bytes
        logger.warning("Cut off %s: %d bytes wait to be sent to it, above max_peer_buffer (%d); "
                       "it stopped reading", self.health.peer_name, queued, self.max_buffer)
        self._orderly = False
        self._end(f"cut off: the peer stopped reading ({queued} bytes queued, max_peer_buffer {self.max_buffer})")
        self._discard_outbox()

    def _discard_outbox(self) -> None:
        self._outbox_in.close()
        while True:
            try:
                self._outbox.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        self._outbox_bytes = 0

    def start_soon(self, func: Callable[..., Any], *args: Any) -> None:
        """Run a task that lives as long as this link (a node runs each call in one)."""
        self._tasks.start_soon(func, *args)

    def _task_failed(self, exc: BaseException) -> None:
        logger.error("A task of the link to %s raised; the link ends", self.health.peer_name, exc_info=exc)
        self._orderly = False
        self._end(f"a task of the link failed: {exc!r}")

    @property
    def last_received(self) -> float:
        return self.health.last_received

    # -- running -------------------------------------------------------------------------

    async def run(self) -> str:
        """Run until the link ends (peer closed, broke, a probe declared it dead, or ``close``)."""
        try:
            with anyio.CancelScope() as scope:  # cancelled when the link ends
                self._scope = scope
                # The receiver runs in this task: a gateway with many links keeps a task less per link.
                await self._tasks.own(self._receiver)
        finally:
            self._outbox_in.close()
            self._outbox.close()
            self.ended.set()
            if self.on_end is not None:
                try:
                    self.on_end(self.end_reason or "connection closed")
                except Exception:
                    logger.exception("error settling the end of the link to %s", self.health.peer_name)
            # An orderly close may wait briefly for the peer; a dead link is not worth waiting for.
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                if self._orderly:
                    await self.connection.aclose()
                else:
                    await self.connection.drop()
        return self.end_reason

    def close(self, reason: str) -> None:
        """End the link once the frames queued so far are written (at most ``CLOSE_FLUSH_TIMEOUT``
        seconds); ``run`` returns ``reason``."""
        self._orderly = True
        if not self.end_reason:
            self.end_reason = reason
        scope = self._scope
        if self._send_nowait is not None or scope is None or scope.cancel_called or self.ended.is_set():
            self._end(reason)  # a connection that queues frames itself writes them in its aclose()
            return
        self._outbox_in.close()  # the sender ends the link once it has written what is queued
        self._tasks.start_soon(self._end_after, CLOSE_FLUSH_TIMEOUT, reason)

    async def _end_after(self, delay: float, reason: str) -> None:
        await anyio.sleep(delay)
        self._end(reason)

    def _end(self, reason: str) -> None:
        if not self.end_reason:
            self.end_reason = reason
        if self._scope is not None:
            self._scope.cancel()

    async def _sender(self) -> None:
        outbox = self._outbox
        try:
            async for frame in outbox:
                if self._send_many is None:
                    self._outbox_bytes -= len(frame)
                    await self._send_one(frame)
                    continue
                frames = [frame]
                while True:
                    try:
                        frames.append(outbox.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                self._outbox_bytes -= sum(map(len, frames))
                if len(frames) == 1:
                    await self._send_one(frame)
                    continue
                try:
                    await self._send_many(frames)
                except MessageTooLargeError:  # nothing was sent: send them one by one, dropping the culprit
                    for frame in frames:
                        await self._send_one(frame)
        except EasyRemoteError as exc:
            self._end(_describe(exc))
        else:  # close() closed the queue and everything in it is written
            self._end(self.end_reason)

    async def _send_one(self, frame: bytes) -> None:
        try:
            await self.connection.send(frame)
        except MessageTooLargeError as exc:  # senders check sizes first; never let one frame end the link
            logger.error("Dropped a frame to %s: %s", self.health.peer_name, exc)

    async def _receiver(self) -> None:
        # The sender, heartbeats and probes are the link's own tasks, like the calls of a
        # node: a task group's cost a gateway ~2 KiB more per link each.
        if self._send_nowait is None:
            self._tasks.start_soon(self._sender)
        if self._send_heartbeats:
            self._tasks.start_soon(self._heartbeats)
        for probe in self._probes:
            self._tasks.start_soon(self._watch, probe)
        health = self.health
        self._now = clock()
        stop_watching = self._silence_watch.watch(health, self._end) if self._silence_watch is not None else None
        deliver = self.connection.extra(ConnectionAttribute.deliver_frames, None)
        try:
            if deliver is not None:  # the connection hands each frame to _frame as it arrives
                deliver(self._frame)
            while True:  # without it, or to learn how the link ended: receive raises then
                self._frame(await self.connection.receive())
        except anyio.EndOfStream:
            self._orderly = True
            self._end("peer closed the connection")
        except ProtocolError as exc:
            if self._quiet is not None:
                self._quiet.log(logging.ERROR, self.connection.peer, "protocol", "Protocol error from %s: %s",
                                health.peer_name, exc)
            else:
                logger.error("Protocol error from %s: %s", health.peer_name, exc)
            self._end(f"protocol error: {exc}")
        except EasyRemoteError as exc:
            self._end(_describe(exc))
        finally:
            if stop_watching is not None:
                stop_watching()

    def _frame(self, frame: bytes) -> None:
        """One frame from the peer: liveness, heartbeats answered here, the rest to ``on_frame``.
        A malformed frame raises ``ProtocolError``, which ends the link."""
        self.health.last_received = self._now()
        self.last_received_wall = time.time()
        envelope, attachment = decode_frame(frame)
        if envelope.WhichOneof("body") == "heartbeat":
            if not envelope.heartbeat.reply:
                self.send(pb.Envelope(heartbeat=pb.Heartbeat(seq=envelope.heartbeat.seq, reply=True)))
            return
        try:
            self._on_frame(envelope, attachment)
        except EasyRemoteError:
            raise
        except Exception:  # a bug in a frame handler must not take the link down
            logger.exception("error handling a %s frame", envelope.WhichOneof("body"))

    async def _heartbeats(self) -> None:
        interval = self.health.heartbeat_interval
        while True:
            await anyio.sleep(interval)
            self._heartbeat_seq += 1
            self.send(pb.Envelope(heartbeat=pb.Heartbeat(seq=self._heartbeat_seq)))

    async def _watch(self, probe: HealthProbe) -> None:
        try:
            await probe.watch(self.health)
        except LinkDead as exc:
            self._end(str(exc) or f"{probe.name} probe declared the link dead")
        except Exception as exc:  # fail closed: a link nothing watches could hang for ever
            logger.error("Health probe %r failed on %s, ending the link: %s: %s", probe.name,
                         self.health.peer_name, type(exc).__name__, exc)
            self._end(f"health probe {probe.name!r} failed: {type(exc).__name__}: {exc}")


def _nothing() -> int:
    return 0


# Closed and empty: the outbox of a link whose connection queues frames itself.
_NO_OUTBOX = anyio.create_memory_object_stream[bytes](0)
_NO_OUTBOX[0].close()
_NO_OUTBOX[1].close()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, ConnectionLostError):
        return text or "connection lost"
    return text or type(exc).__name__
