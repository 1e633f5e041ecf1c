"""The example plugin's own behaviour: the Fibonacci schedule, its jitter band, the latency probe's verdicts.

The interface contract every retry policy keeps is the shipped suite
(``easyremote_core.testing.policy_contract``), which ``test_third_party.py`` runs against
the installed example.

The package is imported from its source directory here; ``test_third_party.py`` proves
that EasyRemote finds it through a real installed distribution.
"""

from __future__ import annotations

import importlib
import math
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import MockClock

from easyremote_core import ConfigurationError, HealthProbe, LinkDead, LinkHealth, RetryPolicy

pytestmark = pytest.mark.timeout(60)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugins"
FIBONACCI = [1, 1, 2, 3, 5, 8, 13, 21, 34, 55]


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    sys.path.insert(0, str(EXAMPLE))
    try:
        yield importlib.import_module("easyremote_example_plugins")
    finally:
        sys.path.remove(str(EXAMPLE))


# --- the fibonacci retry policy ------------------------------------------------------------

bases = st.floats(min_value=0.001, max_value=100.0)
stretches = st.floats(min_value=1.0, max_value=10_000.0)  # cap = base * stretch
seeds = st.integers(min_value=0, max_value=2**32)


def test_it_is_a_retry_policy_registered_under_its_name(example: ModuleType) -> None:
    assert issubclass(example.FibonacciBackoff, RetryPolicy)
    assert example.easyremote_retry_policies() == {"fibonacci": example.FibonacciBackoff}
    policy = example.easyremote_retry_policies()["fibonacci"](base=2.0, cap=60.0)  # as the core calls it
    assert (policy.base, policy.cap) == (2.0, 60.0)


def test_without_jitter_it_is_the_fibonacci_sequence_times_base(example: ModuleType) -> None:
    policy = example.FibonacciBackoff(0.5, 1000.0, jitter=0)
    assert [policy.next_delay(n) for n in range(1, 11)] == [0.5 * f for f in FIBONACCI]
    assert example.FibonacciBackoff(2.0, 10.0, jitter=0).next_delay(6) == 10.0  # 16 s capped


@given(base=bases, stretch=stretches, seed=seeds)
def test_every_delay_is_positive_within_its_jitter_band_and_never_above_cap(
    example: ModuleType, base: float, stretch: float, seed: int
) -> None:
    cap = base * stretch
    policy = example.FibonacciBackoff(base, cap, rng=random.Random(seed))
    for attempt in range(1, 80):
        nominal = policy.nominal_delay(attempt)
        delay = policy.next_delay(attempt)
        assert 0 < delay <= cap
        assert nominal * 0.8 <= delay <= nominal * 1.2


@given(base=bases, stretch=stretches)
def test_nominal_delays_never_decrease_and_reach_the_cap(
    example: ModuleType, base: float, stretch: float
) -> None:
    policy = example.FibonacciBackoff(base, base * stretch)
    nominal = [policy.nominal_delay(n) for n in range(1, 60)]
    assert nominal == sorted(nominal)
    assert nominal[-1] == policy.cap


@pytest.mark.parametrize("jitter", [-0.1, 1.0, math.nan])
def test_jitter_outside_zero_to_one_is_refused(example: ModuleType, jitter: float) -> None:
    with pytest.raises(ConfigurationError, match=r"^jitter \("):
        example.FibonacciBackoff(jitter=jitter)


def test_describe_and_repr_speak_of_the_schedule(example: ModuleType) -> None:
    policy = example.FibonacciBackoff(1.0, 30.0)
    assert policy.describe() == "fibonacci backoff: 1s, 1s, 2s, 3s, 5s … up to 30s, each ±20%"
    assert repr(policy) == "FibonacciBackoff(base=1, cap=30, jitter=0.2)"


# --- the latency health probe --------------------------------------------------------------

INTERVAL = 5.0  # the guide's heartbeat_interval; trio's MockClock makes the waits virtual


class UntouchableConnection:
    """The probe reads only ``last_received``; it must not use the connection."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the latency probe touched connection.{name}")


def make_link() -> LinkHealth:
    return LinkHealth(
        connection=UntouchableConnection(),  # type: ignore[arg-type]
        heartbeat_interval=INTERVAL,
        heartbeat_timeout=15.0,
        health_check_interval=30.0,
        last_received=anyio.current_time(),
    )


async def answered_heartbeats(link: LinkHealth, round_trips: list[float]) -> None:
    """A heartbeat every ``INTERVAL`` whose answer arrives after the next round trip of the list."""
    for round_trip in round_trips:
        sent = anyio.current_time()
        await anyio.sleep(round_trip)
        link.last_received = anyio.current_time()
        await anyio.sleep_until(sent + INTERVAL)
    await anyio.sleep_forever()  # the heartbeats go on; their answers do not come


virtual_time = pytest.mark.parametrize(
    "anyio_backend", [("trio", {"clock": MockClock(autojump_threshold=0)})]
)


def test_it_is_a_health_probe_registered_under_its_name(example: ModuleType) -> None:
    assert issubclass(example.LatencyProbe, HealthProbe)
    probe = example.easyremote_health_probes()["latency"]()  # as the core calls it: no arguments
    assert probe.name == "latency" and probe.max_round_trip == 1.0


@pytest.mark.anyio
@virtual_time
async def test_round_trips_within_the_bound_keep_the_link_alive(example: ModuleType) -> None:
    link = make_link()
    probe = example.LatencyProbe(max_round_trip=1.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(answered_heartbeats, link, [0.9, 0.1, 0.9, 0.5] * 10)
        with pytest.raises(LinkDead, match=r"heartbeat round trip above 1s"):
            await probe.watch(link)
        tg.cancel_scope.cancel()
    # Alive through all 40 answered heartbeats; dead within interval + bound of the last answer.
    assert anyio.current_time() - link.last_received == pytest.approx(INTERVAL + 1.0)
    assert anyio.current_time() >= 40 * INTERVAL


@pytest.mark.anyio
@virtual_time
async def test_a_slow_round_trip_is_dead_before_the_heartbeat_timeout(example: ModuleType) -> None:
    link = make_link()
    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(answered_heartbeats, link, [0.2, 0.2, 3.0])  # the third answer comes 3 s late
        with pytest.raises(LinkDead):
            await example.LatencyProbe(max_round_trip=1.0).watch(link)
        tg.cancel_scope.cancel()
    # Answers at 0.2 and 5.2; the next heartbeat (sent at 10) is unanswered by 11.2 < 5.2 + 15.
    assert anyio.current_time() - started == pytest.approx(5.2 + INTERVAL + 1.0)


@pytest.mark.parametrize("bound", [0.0, -1.0, math.nan, math.inf])
def test_a_meaningless_bound_is_refused(example: ModuleType, bound: float) -> None:
    with pytest.raises(ValueError, match=r"^max_round_trip \("):
        example.LatencyProbe(max_round_trip=bound)
