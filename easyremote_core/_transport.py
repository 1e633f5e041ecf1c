"""The transport interface: how a transport opens and accepts links (see ``_connection`` for a link)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ._address import Address
from ._connection import Connection, ConnectionHandler
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
