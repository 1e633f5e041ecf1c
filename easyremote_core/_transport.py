"""The transport interface: how envelope frames travel between two peers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio import TypedAttributeProvider, TypedAttributeSet, typed_attribute

from ._address import Address

if TYPE_CHECKING:
    from ._probes import HealthProbe

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class TLSConfig:
    """TLS material by file path. A server needs cert and key; ``ca`` verifies the peer."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    require_client_cert: bool = False
    server_hostname: str | None = None


@dataclass(frozen=True)
class LinkOptions:
    """Settings a transport applies to every link it opens or accepts."""

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    connect_timeout: float = 10.0
    tls: TLSConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: A listener closes an accepted connection whose transport handshake (TLS, HTTP/2,
    #: a greeting) has not finished within this many seconds.
    handshake_timeout: float = 10.0
    #: A listener keeps at most this many connections in their handshake at once; one more
    #: closes the oldest of them (a slow attacker's, most likely).
    max_pending_handshakes: int = 1000


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


class Listener(ABC):
    """A bound listening endpoint. ``port`` is the bound port."""

    port: int = 0

    @abstractmethod
    async def serve(self, handler: ConnectionHandler) -> None:
        """Accept links until cancelled or closed, running ``handler(connection)``
        once per link in its own task and closing the link when it returns. A
        handler that raises is logged; the listener goes on serving."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop accepting and reset every open link (peers see ``ConnectionLostError``);
        safe to call more than once."""


class Transport(ABC):
    """Opens and accepts :class:`Connection` objects for one wire technology."""

    name: str = ""
    label: str = ""  # how logs name a link of this kind ("gRPC"); defaults to name
    backends: tuple[str, ...] = ("asyncio",)  # anyio backends it runs on; the contract suite reads it

    @abstractmethod
    async def connect(self, address: Address, options: LinkOptions) -> Connection:
        """Dial the gateway; raises ``GatewayUnavailableError`` if it cannot be reached."""

    @abstractmethod
    async def listen(self, host: str, port: int, options: LinkOptions) -> Listener:
        """Bind (port 0 picks a free port); serving starts with ``Listener.serve``."""

    def default_probes(self) -> Sequence[HealthProbe]:
        """Health probes this transport adds to every link besides the heartbeat."""
        return ()

    async def wait_reachable(self, address: Address, options: LinkOptions) -> None:
        """Return once a gateway that refused connections accepts them again.

        The connection supervisor calls this while it waits out a backoff delay,
        to retry at once when the gateway is back. The default never returns;
        TCP-based transports use :func:`easyremote_core.wait_until_listening`.
        """
        await anyio.sleep_forever()

    async def aclose(self) -> None:
        """Release what the transport holds across links."""
