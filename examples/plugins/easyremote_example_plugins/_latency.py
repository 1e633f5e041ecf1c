"""The ``latency`` health probe: a link whose heartbeats go unanswered too long is dead."""

from __future__ import annotations

import logging
import math

import anyio

from easyremote_core import ConfigurationError, HealthProbe, LinkDead, LinkHealth

logger = logging.getLogger(__name__)


class LatencyProbe(HealthProbe):
    """Declares the link dead when a heartbeat is not answered within ``max_round_trip`` seconds.

    A node or client sends a heartbeat every ``heartbeat_interval`` and the gateway
    answers each one, so on a link whose round trips stay below ``max_round_trip``
    the peer is never silent for longer than ``heartbeat_interval + max_round_trip``.
    Longer silence means a heartbeat sent after the last frame went unanswered for
    more than ``max_round_trip``: the link is too slow (or half-open), and it is
    declared dead long before ``heartbeat_timeout``. The round trip includes the time
    a heartbeat waits behind large frames in the sender's queue.

    It reads only ``link.last_received``, so it works over every transport. It belongs on
    the dialling side (nodes and clients); the gateway sends no heartbeats of its own.
    """

    name = "latency"
    detects_silence = True  # within heartbeat_interval + max_round_trip

    def __init__(self, max_round_trip: float = 1.0) -> None:
        if not (math.isfinite(max_round_trip) and max_round_trip > 0):
            raise ConfigurationError(f"max_round_trip ({max_round_trip}) must be a finite number greater than 0")
        self.max_round_trip = float(max_round_trip)

    async def watch(self, link: LinkHealth) -> None:
        allowed = link.heartbeat_interval + self.max_round_trip
        started = anyio.current_time()
        last = link.last_received or started
        while True:
            await anyio.sleep_until(last + allowed)
            latest = link.last_received or started
            if latest != last:  # a frame arrived in time: re-arm from it
                last = latest
                continue
            silent = anyio.current_time() - last
            logger.warning("No answer from %s for %.1fs (heartbeat every %gs, round trip bound %gs)",
                           link.peer_name, silent, link.heartbeat_interval, self.max_round_trip)
            raise LinkDead(f"heartbeat round trip above {self.max_round_trip:g}s "
                           f"(peer silent for {silent:.1f}s)")

    def __repr__(self) -> str:
        return f"LatencyProbe(max_round_trip={self.max_round_trip:g})"
