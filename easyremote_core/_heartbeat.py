"""Liveness, part of the core: a link that has been silent for ``heartbeat_timeout`` seconds is dead."""

from __future__ import annotations

import logging
import math

from ._backend import clock, sleeper
from ._errors import ConfigurationError
from ._logs import capped
from ._probes import HealthProbe, LinkDead, LinkHealth
from .hookspecs import hookimpl

# Not __name__: users configure the ``easyremote`` logger, and the guide's
# "Heartbeat timeout: …" line must reach it.
logger = capped(logging.getLogger("easyremote.probes"))


class HeartbeatProbe(HealthProbe):
    """Declares the link dead when no frame has come from the peer for ``heartbeat_timeout`` seconds.

    Transport-neutral: it reads only ``link.last_received``, which the core moves as
    frames arrive. It sleeps until the deadline ``last_received + heartbeat_timeout``
    and, if a frame came in the meantime, sleeps again until the new deadline; so it
    wakes about once per timeout, and detects silence as soon as the deadline passes.
    A ``last_received`` of 0 counts the start of :meth:`watch` as the last frame.
    """

    name = "heartbeat"
    detects_silence = True

    async def watch(self, link: LinkHealth) -> None:
        timeout = link.heartbeat_timeout
        if not (math.isfinite(timeout) and timeout > 0):
            raise ConfigurationError(f"heartbeat_timeout ({timeout}) must be a finite number greater than 0")
        now, sleep = clock(), sleeper()  # a gateway has one of these asleep per link
        started = now()
        last = link.last_received or started
        while True:
            await sleep(max(0.0, last + timeout - now()))
            latest = link.last_received or started
            if latest != last:  # a frame arrived: re-arm to the new deadline
                last = latest
                continue
            elapsed = now() - last
            if link.many_peers:
                logger.warning("Heartbeat timeout: %.1fs > %gs (%s)", elapsed, timeout, link.peer_name)
            else:
                logger.warning("Heartbeat timeout: %.1fs > %gs", elapsed, timeout)
            raise LinkDead("Heartbeat timeout detected")


@hookimpl
def easyremote_health_probes() -> dict[str, type[HealthProbe]]:
    """The heartbeat probe, built in: no plugin setting can take liveness away."""
    return {HeartbeatProbe.name: HeartbeatProbe}
