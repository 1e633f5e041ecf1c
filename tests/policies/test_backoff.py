"""The shipped retry policies: bounds, jitter, reset, reproducibility and argument checks."""

from __future__ import annotations

import random

import pytest
from easyremote_policies import (
    ConstantBackoff,
    DecorrelatedJitterBackoff,
    ExponentialBackoff,
    FullJitterBackoff,
)
from hypothesis import given
from hypothesis import strategies as st

from easyremote_core import ConfigurationError, RetryPolicy

POLICIES: list[type[RetryPolicy]] = [
    ExponentialBackoff,
    FullJitterBackoff,
    DecorrelatedJitterBackoff,
    ConstantBackoff,
]

bases = st.floats(min_value=0.001, max_value=100.0)
stretches = st.floats(min_value=1.0, max_value=10_000.0)  # cap = base * stretch
attempts = st.integers(min_value=1, max_value=200)
seeds = st.integers(min_value=0, max_value=2**32)
jitters = st.floats(min_value=0.0, max_value=0.99)


def sequence(policy: RetryPolicy, count: int) -> list[float]:
    return [policy.next_delay(n) for n in range(1, count + 1)]


# --- every policy -----------------------------------------------------------


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.name)
@given(base=bases, stretch=stretches, seed=seeds)
def test_every_delay_is_positive_and_never_above_cap(
    cls: type[RetryPolicy], base: float, stretch: float, seed: int
) -> None:
    cap = base * stretch
    policy = cls(base, cap, rng=random.Random(seed))
    for delay in sequence(policy, 60):
        assert 0 < delay <= cap


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.name)
@given(seed=seeds)
def test_same_seed_gives_same_sequence(cls: type[RetryPolicy], seed: int) -> None:
    first = sequence(cls(1.0, 30.0, rng=random.Random(seed)), 30)
    second = sequence(cls(1.0, 30.0, rng=random.Random(seed)), 30)
    assert first == second


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.name)
def test_delays_carry_jitter_by_default(cls: type[RetryPolicy]) -> None:
    # A thousand nodes must not come back in lock-step: the same attempt draws different delays.
    firsts = {cls(2.0, 60.0, rng=random.Random(seed)).next_delay(1) for seed in range(50)}
    assert len(firsts) == 50
    policy = cls(2.0, 60.0, rng=random.Random(7))
    at_cap = {policy.next_delay(40) for _ in range(50)}
    assert len(at_cap) > 1


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.name)
def test_unseeded_policies_do_not_share_a_sequence(cls: type[RetryPolicy]) -> None:
    assert sequence(cls(2.0, 60.0), 10) != sequence(cls(2.0, 60.0), 10)


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.name)
@given(seed=seeds, failures=st.integers(min_value=1, max_value=30))
def test_reset_restores_first_attempt_behaviour(cls: type[RetryPolicy], seed: int, failures: int) -> None:
    rng = random.Random(seed)
    used = cls(1.0, 50.0, rng=rng)
    sequence(used, failures)
    used.reset()
    rng.seed(seed)  # same draws from here on as a fresh policy would make
    fresh = cls(1.0, 50.0, rng=random.Random(seed))
    assert sequence(used, 10) == sequence(fresh, 10)


@given(seed=seeds)
def test_decorrelated_reset_forgets_the_previous_delay(seed: int) -> None:
    policy = DecorrelatedJitterBackoff(1, 1000, rng=random.Random(seed))
    for _ in range(10_000):  # climb well above 3·base
        if policy.next_delay(2) > 100:
            break
    else:
        pytest.fail("decorrelated jitter never climbed above 100 s with cap 1000 s")
    policy.reset()
    assert 1 <= policy.next_delay(2) <= 3


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.name)
@pytest.mark.parametrize(
    ("base", "cap", "parameter"),
    [
        (0, 10, "base"),
        (-1, 10, "base"),
        (float("nan"), 10, "base"),
        (float("inf"), float("inf"), "base"),
        (5, 4, "cap"),
        (1, float("inf"), "cap"),
        (1, float("nan"), "cap"),
    ],
)
def test_invalid_base_or_cap_is_refused(
    cls: type[RetryPolicy], base: float, cap: float, parameter: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{parameter} \(.*\) must be") as info:
        cls(base, cap)
    assert isinstance(info.value, ConfigurationError)


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.name)
@pytest.mark.parametrize("attempt", [0, -1])
def test_attempts_count_from_one(cls: type[RetryPolicy], attempt: int) -> None:
    with pytest.raises(ValueError, match=r"attempt \(-?\d+\) must be at least 1"):
        cls(1, 10).next_delay(attempt)


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.name)
def test_describe_and_repr_speak_of_the_schedule(cls: type[RetryPolicy]) -> None:
    policy = cls(2, 60)
    assert policy.name in policy.describe()  # type: ignore[attr-defined]
    assert "60s" in policy.describe() or cls is ConstantBackoff  # type: ignore[attr-defined]
    assert repr(policy).startswith(f"{cls.__name__}(base=2, cap=60")


@pytest.mark.parametrize("cls", [ExponentialBackoff, ConstantBackoff], ids=lambda c: c.name)
@pytest.mark.parametrize("jitter", [-0.1, 1.0, 1.5, float("nan")])
def test_jitter_outside_zero_to_one_is_refused(cls: type[RetryPolicy], jitter: float) -> None:
    with pytest.raises(ConfigurationError, match=r"^jitter \(.*\) must be at least 0 and less than 1"):
        cls(1, 10, jitter=jitter)  # type: ignore[call-arg]


# --- exponential ------------------------------------------------------------


def test_exponential_follows_the_guide_schedule() -> None:
    policy = ExponentialBackoff(2, 60)
    assert [policy.nominal_delay(n) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]
    assert [ExponentialBackoff(3, 60).nominal_delay(n) for n in range(1, 7)] == [3, 6, 12, 24, 48, 60]
    assert policy.describe() == (
        "exponential backoff: 2s, 4s, 8s … doubling up to 60s, each ±20% (never above the cap)"
    )


@given(base=bases, stretch=stretches, attempt=attempts, seed=seeds)
def test_exponential_stays_within_twenty_percent_of_the_doubling(
    base: float, stretch: float, attempt: int, seed: int
) -> None:
    cap = base * stretch
    policy = ExponentialBackoff(base, cap, rng=random.Random(seed))
    nominal = min(cap, base * 2.0 ** min(attempt - 1, 1023))
    assert policy.nominal_delay(attempt) == pytest.approx(nominal)
    for _ in range(5):
        delay = policy.next_delay(attempt)
        assert 0.8 * nominal * (1 - 1e-12) <= delay <= min(cap, 1.2 * nominal)


@given(base=bases, stretch=stretches, attempt=attempts)
def test_exponential_nominal_delay_never_decreases(base: float, stretch: float, attempt: int) -> None:
    policy = ExponentialBackoff(base, base * stretch)
    assert policy.nominal_delay(attempt) <= policy.nominal_delay(attempt + 1)


def test_exponential_mean_delay_never_decreases() -> None:
    policy = ExponentialBackoff(2, 60, rng=random.Random(3))
    means = [sum(policy.next_delay(n) for _ in range(2000)) / 2000 for n in range(1, 10)]
    assert means[:6] == sorted(means[:6])
    assert means[:5] == pytest.approx([2, 4, 8, 16, 32], rel=0.02)
    assert means[5:] == pytest.approx([54] * 4, rel=0.02)  # uniform over [48, 60] once at the cap


@given(seed=seeds)
def test_exponential_spreads_below_the_cap_instead_of_piling_on_it(seed: int) -> None:
    # The band is truncated at the cap and drawn uniformly, so few delays land exactly on it.
    policy = ExponentialBackoff(2, 60, rng=random.Random(seed))
    delays = [policy.next_delay(20) for _ in range(200)]
    assert all(48 <= d <= 60 for d in delays)
    assert sum(d == 60 for d in delays) <= 2


@given(jitter=jitters, seed=seeds, attempt=attempts)
def test_exponential_jitter_is_configurable(jitter: float, seed: int, attempt: int) -> None:
    policy = ExponentialBackoff(1, 1000, jitter=jitter, rng=random.Random(seed))
    nominal = policy.nominal_delay(attempt)
    delay = policy.next_delay(attempt)
    assert nominal * (1 - jitter) * (1 - 1e-12) <= delay <= min(1000, nominal * (1 + jitter))


def test_exponential_without_jitter_is_the_bare_schedule() -> None:
    policy = ExponentialBackoff(2, 60, jitter=0)
    assert sequence(policy, 7) == [2, 4, 8, 16, 32, 60, 60]


def test_exponential_survives_huge_attempt_numbers() -> None:
    policy = ExponentialBackoff(2, 60)
    assert 48 <= policy.next_delay(10**6) <= 60


# --- full jitter ------------------------------------------------------------


@given(base=bases, stretch=stretches, attempt=attempts, seed=seeds)
def test_full_jitter_stays_between_floor_and_ceiling(
    base: float, stretch: float, attempt: int, seed: int
) -> None:
    cap = base * stretch
    policy = FullJitterBackoff(base, cap, rng=random.Random(seed))
    ceiling = min(cap, base * 2.0 ** min(attempt, 1023))
    assert policy.floor == pytest.approx(base / 10)
    for _ in range(5):
        assert policy.floor <= policy.next_delay(attempt) <= ceiling


@given(base=bases, seed=seeds, fraction=st.floats(min_value=0.001, max_value=1.0))
def test_full_jitter_floor_is_configurable(base: float, seed: int, fraction: float) -> None:
    floor = min(base * fraction, base)
    policy = FullJitterBackoff(base, base * 10, floor=floor, rng=random.Random(seed))
    for attempt in range(1, 10):
        assert floor <= policy.next_delay(attempt) <= min(base * 10, base * 2**attempt)


@pytest.mark.parametrize("floor", [0, -1, 2.5, float("nan")])
def test_full_jitter_floor_must_be_positive_and_at_most_base(floor: float) -> None:
    with pytest.raises(ConfigurationError, match=r"^floor \(.*\) must be greater than 0 and at most base"):
        FullJitterBackoff(2, 60, floor=floor)


def test_full_jitter_averages_the_exponential_schedule() -> None:
    policy = FullJitterBackoff(2, 1000, rng=random.Random(1))
    for attempt, expected in [(1, 2.0), (2, 4.0), (3, 8.0)]:
        mean = sum(policy.next_delay(attempt) for _ in range(4000)) / 4000
        assert mean == pytest.approx(expected + 0.1, rel=0.05)  # uniform(0.2, 2·expected)


# --- decorrelated jitter ----------------------------------------------------


@given(base=bases, stretch=stretches, seed=seeds)
def test_decorrelated_stays_in_base_to_cap_and_at_most_triples(
    base: float, stretch: float, seed: int
) -> None:
    cap = base * stretch
    policy = DecorrelatedJitterBackoff(base, cap, rng=random.Random(seed))
    previous = base
    for attempt in range(1, 60):
        delay = policy.next_delay(attempt)
        assert base <= delay <= cap
        assert delay <= 3 * previous
        previous = delay


@given(seed=seeds)
def test_decorrelated_first_attempt_starts_afresh(seed: int) -> None:
    policy = DecorrelatedJitterBackoff(1, 1000, rng=random.Random(seed))
    sequence(policy, 20)
    assert 1 <= policy.next_delay(1) <= 3


# --- constant ---------------------------------------------------------------


@given(base=bases, stretch=stretches, attempt=attempts, seed=seeds)
def test_constant_stays_in_its_jitter_band(base: float, stretch: float, attempt: int, seed: int) -> None:
    cap = base * stretch
    policy = ConstantBackoff(base, cap, rng=random.Random(seed))
    assert base * 0.9 * (1 - 1e-12) <= policy.next_delay(attempt) <= min(cap, base * 1.1)


@given(jitter=jitters, attempt=attempts, seed=seeds)
def test_constant_jitter_is_configurable(jitter: float, attempt: int, seed: int) -> None:
    policy = ConstantBackoff(3, 60, jitter=jitter, rng=random.Random(seed))
    assert 3 * (1 - jitter) * (1 - 1e-12) <= policy.next_delay(attempt) <= 3 * (1 + jitter)


def test_constant_without_jitter_is_exactly_base() -> None:
    policy = ConstantBackoff(3, 60, jitter=0)
    assert set(sequence(policy, 20)) == {3.0}
    assert policy.describe() == "constant backoff: 3s after every failure"
