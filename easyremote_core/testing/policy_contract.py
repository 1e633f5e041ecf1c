"""The retry policy contract suite: what every RetryPolicy keeps, whoever wrote it.

Run it against an installed policy::

    python -m pytest -p easyremote_core.testing.pytest_plugin --pyargs easyremote_core.testing.policy_contract \\
        --easyremote-retry-policy NAME

or subclass :class:`TestRetryPolicyContract` in your own tests and set ``policy_names``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

import pytest

from .._errors import ConfigurationError
from .._plugins import get_plugin_manager
from .._retry import RetryPolicy
from .pytest_plugin import POLICY_DEST, selected_names

__all__ = ["TestRetryPolicyContract"]

PolicyFactory = Callable[..., RetryPolicy]

#: (base, cap) pairs the suite builds each policy with: the guide's defaults, tight, wide, tiny.
SETTINGS = [(2.0, 60.0), (1.0, 1.0), (0.5, 3600.0), (0.001, 0.01)]
#: Attempt numbers after days of outage: no OverflowError, no huge delay.
HUGE_ATTEMPTS = [1_000, 10**6, 2**31, 10**12]
SAMPLES = 200


def _selected_policies(config: pytest.Config, fixed: Sequence[str] | None) -> list[str]:
    return selected_names(config, "retry policy", POLICY_DEST, fixed)


class TestRetryPolicyContract:
    """What the connection supervisor relies on from a retry policy, run once per policy.

    The policy is built as the core builds it, ``factory(base=..., cap=...)``. ``policy_names``
    pins the policies (default: ``--easyremote-retry-policy``, else every installed one).
    """

    policy_names: ClassVar[Sequence[str] | None] = None

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "policy_name" in metafunc.fixturenames:
            metafunc.parametrize("policy_name", _selected_policies(metafunc.config, type(self).policy_names))

    @pytest.fixture
    def factory(self, policy_name: str) -> PolicyFactory:
        return get_plugin_manager().entries("retry policy")[policy_name].factory

    @pytest.mark.timeout(30)
    def test_it_is_a_retry_policy_under_its_registered_name(self, factory: PolicyFactory, policy_name: str) -> None:
        policy = factory(base=2.0, cap=60.0)
        assert isinstance(policy, RetryPolicy)
        assert policy.name == policy_name, f"registered as {policy_name!r} but names itself {policy.name!r}"
        assert (policy.base, policy.cap) == (2.0, 60.0)

    @pytest.mark.timeout(30)
    @pytest.mark.parametrize(("base", "cap"), SETTINGS)
    def test_every_delay_is_finite_above_zero_and_at_most_cap(
            self, factory: PolicyFactory, base: float, cap: float) -> None:
        policy = factory(base=base, cap=cap)
        for attempt in [*range(1, 300), *HUGE_ATTEMPTS]:
            delay = policy.next_delay(attempt)
            if delay is None:  # the policy gave up: allowed, and final
                return
            assert isinstance(delay, (int, float)) and not isinstance(delay, bool), (attempt, delay)
            assert math.isfinite(delay) and 0 < delay <= cap, (attempt, delay)

    @pytest.mark.timeout(30)
    def test_delays_carry_jitter_by_default(self, factory: PolicyFactory) -> None:
        policy = factory(base=2.0, cap=60.0)
        delays = {policy.next_delay(3) for _ in range(SAMPLES)}
        assert len(delays - {None}) > 1, "a thousand nodes cut off together would return in lock-step"

    @pytest.mark.timeout(30)
    def test_two_policies_do_not_share_a_schedule(self, factory: PolicyFactory) -> None:
        first, second = factory(base=2.0, cap=60.0), factory(base=2.0, cap=60.0)
        assert [first.next_delay(n) for n in range(1, 30)] != [second.next_delay(n) for n in range(1, 30)]

    @pytest.mark.timeout(30)
    def test_reset_starts_the_schedule_afresh(self, factory: PolicyFactory) -> None:
        policy = factory(base=1.0, cap=3600.0)
        for attempt in range(1, 40):
            policy.next_delay(attempt)
        policy.reset()
        first = [policy.next_delay(1) for _ in range(SAMPLES)]
        fresh = factory(base=1.0, cap=3600.0)
        firsts = [fresh.next_delay(1) for _ in range(SAMPLES)]
        # After a reset the first delay is a first delay again: near base, never near the cap.
        assert None not in first and None not in firsts
        low, high = max(d for d in first if d is not None), max(d for d in firsts if d is not None)
        assert low <= 3.0 * high, (low, high)

    @pytest.mark.timeout(30)
    @pytest.mark.parametrize(("base", "cap"), [(0, 1), (-1, 1), (math.nan, 1), (math.inf, math.inf),
                                               (2, 1), (1, math.nan)])
    def test_invalid_base_or_cap_is_a_configuration_error(
            self, factory: PolicyFactory, base: float, cap: float) -> None:
        with pytest.raises(ConfigurationError):
            factory(base=base, cap=cap)

    @pytest.mark.timeout(30)
    @pytest.mark.parametrize("attempt", [0, -1])
    def test_attempts_count_from_one(self, factory: PolicyFactory, attempt: int) -> None:
        with pytest.raises(ValueError):
            factory(base=2.0, cap=60.0).next_delay(attempt)

    @pytest.mark.timeout(30)
    def test_next_delay_does_not_block_the_event_loop(self, factory: PolicyFactory) -> None:
        policy = factory(base=2.0, cap=60.0)
        started = time.perf_counter()
        for attempt in range(1, 10_001):
            policy.next_delay(attempt)
        assert time.perf_counter() - started < 2.0, "10,000 delays should take milliseconds"
