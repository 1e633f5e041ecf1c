"""Shared pieces of the EasyRemote benchmarks: bounded timing loops, statistics, machine facts."""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata

import anyio

from easyremote_core._backend import event_loop

Call = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Budget:
    """How long each measured line may run: warm-up, then measure, each bounded by count and time."""

    warmup_calls: int
    warmup_seconds: float
    max_calls: int
    max_seconds: float

    @classmethod
    def named(cls, name: str) -> Budget:
        return _BUDGETS[name]


_BUDGETS = {
    "smoke": Budget(warmup_calls=3, warmup_seconds=0.2, max_calls=20, max_seconds=0.3),
    "quick": Budget(warmup_calls=200, warmup_seconds=0.3, max_calls=20_000, max_seconds=1.0),
    "full": Budget(warmup_calls=1_000, warmup_seconds=1.0, max_calls=500_000, max_seconds=5.0),
}


@dataclass
class Stats:
    """Calls completed in a measured window, and the latency of each."""

    calls: int
    seconds: float
    latencies: list[float] = field(repr=False)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_ms(self) -> float:
        """Wall time per call: the inverse of the rate, so it includes everything between calls."""
        return 1000 * self.seconds / self.calls if self.calls else math.nan

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
        return 1000 * ordered[index]

    @property
    def p50_ms(self) -> float:
        return self.percentile_ms(50)

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(99)


async def measure(call: Call, budget: Budget, *, workers: int = 1) -> Stats:
    """Warm up, then run ``call`` from ``workers`` concurrent tasks until the budget's count or time runs out."""
    await _run(call, workers, budget.warmup_calls, budget.warmup_seconds, None)
    latencies: list[float] = []
    started = time.perf_counter()
    await _run(call, workers, budget.max_calls, budget.max_seconds, latencies)
    return Stats(calls=len(latencies), seconds=time.perf_counter() - started, latencies=latencies)


async def _run(call: Call, workers: int, max_calls: int, max_seconds: float, latencies: list[float] | None) -> None:
    deadline = time.perf_counter() + max_seconds
    issued = 0
    clock = time.perf_counter

    async def worker() -> None:
        nonlocal issued
        while issued < max_calls and clock() < deadline:
            issued += 1
            begin = clock()
            await call()
            if latencies is not None:
                latencies.append(clock() - begin)

    # A hard bound above the soft one: a stuck call must not hang the benchmark.
    with anyio.fail_after(max_seconds + 30):
        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker)


def machine() -> str:
    """Cores, platform and the versions the figures depend on, on one line."""
    cores = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not offered on this platform
        usable = cores
    versions = ", ".join(f"{name} {_version(name)}" for name in ("grpcio", "protobuf", "anyio"))
    core_text = f"{usable} cores" if usable == cores else f"{usable} of {cores} cores usable"
    return (f"{core_text}, {platform.system()} {platform.machine()}, "
            f"Python {sys.version.split()[0]} ({platform.python_implementation()}), {versions}, "
            f"EasyRemote's event loop {event_loop()}")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def line(label: str, stats: Stats, note: str = "") -> str:
    """One printed result: label, calls/s, p50/p99 latency, calls counted, and an optional note."""
    text = (f"{label:<44} {stats.rate:>10,.0f} calls/s   p50 {stats.p50_ms:7.3f} ms   "
            f"p99 {stats.p99_ms:7.3f} ms   ({stats.calls:,} calls)")
    return f"{text}   {note}" if note else text
