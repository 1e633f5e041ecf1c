"""Liveness, part of the core: a link that has been silent for ``heartbeat_timeout`` seconds is dead."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable

import anyio

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
            _log_timeout(link, now() - last)
            raise LinkDead(HEARTBEAT_TIMEOUT)


#: Why a link that stayed silent too long ended.
HEARTBEAT_TIMEOUT = "Heartbeat timeout detected"


def _log_timeout(link: LinkHealth, elapsed: float) -> None:
    if link.many_peers:
        logger.warning("Heartbeat timeout: %.1fs > %gs (%s)", elapsed, link.heartbeat_timeout, link.peer_name)
    else:
        logger.warning("Heartbeat timeout: %.1fs > %gs", elapsed, link.heartbeat_timeout)


class _Watched:
    __slots__ = ("health", "on_dead", "started", "stopped")

    def __init__(self, health: LinkHealth, on_dead: Callable[[str], None], started: float) -> None:
        self.health = health
        self.on_dead = on_dead
        self.started = started
        self.stopped = False


class SilenceWatch:
    """What :class:`HeartbeatProbe` does for one link, for all the links of a side with many
    (a gateway), in one task: a heap of deadlines ``last_received + heartbeat_timeout``, the
    task asleep until the earliest. At a deadline a link that received a frame meanwhile goes
    back on the heap with its new deadline; a silent one is declared dead (``on_dead`` with the
    reason) and logged as the probe logs it. A gateway keeps no task and no timer per link.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Watched]] = []
        self._order = itertools.count()  # ties on the heap never compare entries
        self._stopped = 0  # entries on the heap whose link ended
        self._asleep_until = math.inf
        self._wakeup: anyio.Event | None = None
        self._now: Callable[[], float] = anyio.current_time

    def watch(self, health: LinkHealth, on_dead: Callable[[str], None]) -> Callable[[], None]:
        """Watch ``health``'s link until the function returned is called (when the link ends)."""
        timeout = health.heartbeat_timeout
        if not (math.isfinite(timeout) and timeout > 0):
            raise ConfigurationError(f"heartbeat_timeout ({timeout}) must be a finite number greater than 0")
        now = self._now()
        entry = _Watched(health, on_dead, now)
        self._push((health.last_received or now) + timeout, entry)

        def stop() -> None:
            if not entry.stopped:
                entry.stopped = True
                self._stopped += 1
                if self._stopped > 64 and self._stopped > len(self._heap) // 2:
                    self._compact()  # links that came and went do not pile up for a timeout each

        return stop

    @property
    def watched(self) -> int:
        return len(self._heap) - self._stopped

    def _push(self, deadline: float, entry: _Watched) -> None:
        heapq.heappush(self._heap, (deadline, next(self._order), entry))
        if deadline < self._asleep_until and self._wakeup is not None:
            self._wakeup.set()  # earlier than the task sleeps until

    def _compact(self) -> None:
        self._heap = [item for item in self._heap if not item[2].stopped]
        heapq.heapify(self._heap)
        self._stopped = 0

    async def run(self) -> None:
        """Watch until cancelled."""
        self._now = now = clock()
        while True:
            current = now()
            while self._heap and self._heap[0][0] <= current:
                _, _, entry = heapq.heappop(self._heap)
                if entry.stopped:
                    self._stopped -= 1
                    continue
                health = entry.health
                last = health.last_received or entry.started
                if last + health.heartbeat_timeout > current:  # a frame arrived: its new deadline
                    heapq.heappush(self._heap, (last + health.heartbeat_timeout, next(self._order), entry))
                    continue
                entry.stopped = True
                _log_timeout(health, current - last)
                try:
                    entry.on_dead(HEARTBEAT_TIMEOUT)
                except Exception:
                    logger.exception("ending the silent link to %s failed", health.peer_name)
            heap = self._heap
            self._asleep_until = heap[0][0] if heap else math.inf
            self._wakeup = anyio.Event()
            with anyio.move_on_after(self._asleep_until - current):
                await self._wakeup.wait()


@hookimpl
def easyremote_health_probes() -> dict[str, type[HealthProbe]]:
    """The heartbeat probe, built in: no plugin setting can take liveness away."""
    return {HeartbeatProbe.name: HeartbeatProbe}
