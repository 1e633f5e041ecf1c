"""A link between two peers as a transport gives it to the core: framed, ordered, with optional abilities."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

from anyio import TypedAttributeProvider, TypedAttributeSet, typed_attribute


class ConnectionAttribute(TypedAttributeSet):
    """Optional abilities of a :class:`Connection`, read with ``connection.extra(attribute)``.

    A connection offers one by returning it from ``extra_attributes``, as anyio's streams
    offer their socket details; the core uses each only through this set. Without them the
    core writes one frame at a time with ``send`` and counts queued bytes itself.
    """

    #: ``send_nowait(frame)``: queue one frame without waiting; the connection writes
    #: queued frames in order. Raises ``MessageTooLargeError`` or ``ConnectionLostError``
    #: at once. A connection offering it also offers ``buffered_bytes``.
    send_nowait: Callable[[bytes], None] = typed_attribute()
    #: ``await send_many(frames)``: write several frames in order, in fewer writes than one
    #: ``send`` each. Raises ``MessageTooLargeError`` before writing any if one is too large.
    send_many: Callable[[list[bytes]], Awaitable[None]] = typed_attribute()
    #: ``buffered_bytes()``: bytes accepted by ``send_nowait`` and not yet written; the
    #: gateway cuts off a peer whose queue passes ``max_peer_buffer``.
    buffered_bytes: Callable[[], int] = typed_attribute()
    #: ``deliver_frames(handler)``: from now on the connection calls ``handler(frame)`` with
    #: each frame as it arrives, in order, on the event loop (from its read callback, not a
    #: task), instead of keeping it for ``receive``; frames already received go to it at once.
    #: ``receive`` then only waits for the end, and raises as it would. The handler must not
    #: block; what it raises ends the delivery, and ``receive`` raises it. It saves a task
    #: switch per frame: the task waiting in ``receive`` is not woken for each one.
    deliver_frames: Callable[[Callable[[bytes], None]], None] = typed_attribute()


class Connection(TypedAttributeProvider, ABC):
    """A live, ordered, framed link to one peer. Frames are opaque bytes.

    ``send`` may be called from several tasks at once. ``receive`` raises
    :class:`anyio.EndOfStream` after an orderly close by the peer and
    :class:`~easyremote_core.ConnectionLostError` when the link broke. Optional fast
    paths are declared as :class:`ConnectionAttribute` typed attributes.
    """

    peer: str = ""

    @abstractmethod
    async def send(self, frame: bytes) -> None:
        """Send one frame; raises ``MessageTooLargeError`` or ``ConnectionLostError``."""

    @abstractmethod
    async def receive(self) -> bytes:
        """Wait for the next frame."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the link in an orderly way: frames sent before it reach the peer, which
        then sees ``EndOfStream``. Safe to call more than once."""

    async def drop(self) -> None:
        """Release a link already judged dead, at once, without waiting for the peer.

        The default is ``aclose``; transports whose orderly close waits for the
        peer override it."""
        await self.aclose()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


ConnectionHandler = Callable[[Connection], Awaitable[None]]
