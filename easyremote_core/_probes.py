"""The health probe interface: judges whether a live link is still healthy."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ._connection import Connection


@dataclass
class LinkHealth:
    """What a probe may look at while a link is up."""

    connection: Connection
    heartbeat_interval: float
    heartbeat_timeout: float
    health_check_interval: float
    last_received: float = 0.0  # anyio.current_time() of the last frame from the peer
    peer_name: str = "peer"
    #: True on a side that talks to many peers (the gateway): its log lines then name the peer.
    many_peers: bool = False
    extra: dict[str, object] = field(default_factory=dict)


class LinkDead(Exception):
    """Raised by a probe to declare the link dead; the message is the reason."""


class HealthProbe(ABC):
    """Watches one link. ``watch`` runs while the link is up and raises
    :class:`LinkDead` when the link is judged dead; it is cancelled when the
    link closes for another reason."""

    name: str = ""
    #: Whether the probe declares a link dead that stays silent for ``heartbeat_timeout``
    #: (sooner is allowed); the probe contract suite then checks that it does.
    detects_silence: bool = False

    @abstractmethod
    async def watch(self, link: LinkHealth) -> None:
        """Return never (or only if this probe has nothing to watch); raise ``LinkDead``."""
