"""The shipped retry policies: exponential, full jitter, decorrelated jitter and constant backoff."""

from __future__ import annotations

import math
import random

from easyremote_core import ConfigurationError, RetryPolicy

# 2.0 ** 1024 overflows a float; past this many doublings every schedule has long reached its cap.
_MAX_DOUBLINGS = 1023


def _check_base_cap(base: float, cap: float) -> None:
    if not math.isfinite(base) or base <= 0:
        raise ConfigurationError(f"base ({base}) must be a finite number greater than 0")
    if not math.isfinite(cap) or cap < base:
        raise ConfigurationError(f"cap ({cap}) must be a finite number at least base ({base})")


def _check_jitter(jitter: float) -> float:
    if not 0 <= jitter < 1:  # also false for NaN
        raise ConfigurationError(f"jitter ({jitter}) must be at least 0 and less than 1")
    return float(jitter)


def _check_attempt(attempt: int) -> None:
    if attempt < 1:
        raise ValueError(f"attempt ({attempt}) must be at least 1 (attempts are counted from 1)")


def _doubled(base: float, cap: float, doublings: int) -> float:
    """``min(cap, base * 2 ** doublings)`` without overflowing for huge attempt numbers."""
    return min(cap, base * 2.0 ** min(doublings, _MAX_DOUBLINGS))


def _uniform(rng: random.Random, low: float, high: float) -> float:
    """``rng.uniform(low, high)``, kept inside ``[low, high]`` despite float rounding."""
    return min(high, max(low, rng.uniform(low, high)))


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _jittered(rng: random.Random, nominal: float, jitter: float, cap: float) -> float:
    """A delay drawn uniformly from ``nominal·(1 ± jitter)``, the band truncated at ``cap``.

    Truncating the band (rather than clamping the drawn value) keeps the draw uniform:
    nodes waiting at the cap spread over ``[nominal·(1 - jitter), cap]`` instead of
    piling up on exactly ``cap``.
    """
    low = nominal * (1.0 - jitter)
    high = min(cap, nominal * (1.0 + jitter))
    return _uniform(rng, low, high)


class ExponentialBackoff(RetryPolicy):
    """``base``, ``2·base``, ``4·base`` … up to ``cap``, each delay jittered by ±``jitter``.

    Attempt *n* has the nominal delay ``d = min(cap, base·2^(n-1))`` and waits a
    uniform draw from ``[d·(1-jitter), min(cap, d·(1+jitter))]``: never longer than
    ``cap``, never shorter than ``d·(1-jitter)``. With the defaults that is the
    2 s → 4 s → 8 s … 60 s schedule, each delay within ±20 %.
    """

    name = "exponential"

    def __init__(
        self, base: float = 2.0, cap: float = 60.0, *, jitter: float = 0.2, rng: random.Random | None = None
    ) -> None:
        _check_base_cap(base, cap)
        super().__init__(base, cap)
        self.jitter = _check_jitter(jitter)
        self._rng = rng if rng is not None else random.Random()

    def nominal_delay(self, attempt: int) -> float:
        """The un-jittered delay after failed attempt ``attempt``: ``min(cap, base·2^(attempt-1))``."""
        _check_attempt(attempt)
        return _doubled(self.base, self.cap, attempt - 1)

    def next_delay(self, attempt: int) -> float:
        return _jittered(self._rng, self.nominal_delay(attempt), self.jitter, self.cap)

    def describe(self) -> str:
        steps = ", ".join(_seconds(self.nominal_delay(n)) for n in range(1, 4))
        return (
            f"exponential backoff: {steps} … doubling up to {_seconds(self.cap)}, "
            f"each ±{self.jitter:.0%} (never above the cap)"
        )

    def __repr__(self) -> str:
        return f"ExponentialBackoff(base={self.base:g}, cap={self.cap:g}, jitter={self.jitter:g})"


class FullJitterBackoff(RetryPolicy):
    """AWS "full jitter": attempt *n* waits ``uniform(floor, min(cap, base·2^n))``.

    The AWS formula draws from 0; a delay of 0 s would send a node straight back into
    a reconnect storm, so draws start at ``floor`` (default ``base / 10``, at most
    ``base``). The mean delay of attempt *n* is about ``base·2^(n-1)``, the same as
    the exponential schedule, until the cap is reached.
    """

    name = "full-jitter"

    def __init__(
        self,
        base: float = 2.0,
        cap: float = 60.0,
        *,
        floor: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        _check_base_cap(base, cap)
        super().__init__(base, cap)
        if floor is None:
            floor = self.base / 10
        if not 0 < floor <= self.base:  # also false for NaN
            raise ConfigurationError(f"floor ({floor}) must be greater than 0 and at most base ({base})")
        self.floor = float(floor)
        self._rng = rng if rng is not None else random.Random()

    def ceiling(self, attempt: int) -> float:
        """The largest delay attempt ``attempt`` may draw: ``min(cap, base·2^attempt)``."""
        _check_attempt(attempt)
        return _doubled(self.base, self.cap, attempt)

    def next_delay(self, attempt: int) -> float:
        return _uniform(self._rng, self.floor, self.ceiling(attempt))

    def describe(self) -> str:
        return (
            f"full-jitter backoff: attempt n waits between {_seconds(self.floor)} and "
            f"min({_seconds(self.cap)}, {_seconds(self.base)}·2^n), drawn uniformly"
        )

    def __repr__(self) -> str:
        return f"FullJitterBackoff(base={self.base:g}, cap={self.cap:g}, floor={self.floor:g})"


class DecorrelatedJitterBackoff(RetryPolicy):
    """AWS "decorrelated jitter": ``delay = min(cap, uniform(base, 3·previous))``.

    The first attempt (and the first after :meth:`reset`) draws from
    ``[base, 3·base]``; every delay lies in ``[base, cap]`` and is at most three
    times the one before. ``next_delay(1)`` also starts the sequence afresh.
    """

    name = "decorrelated-jitter"

    def __init__(self, base: float = 2.0, cap: float = 60.0, *, rng: random.Random | None = None) -> None:
        _check_base_cap(base, cap)
        super().__init__(base, cap)
        self._rng = rng if rng is not None else random.Random()
        self._previous = self.base

    def next_delay(self, attempt: int) -> float:
        _check_attempt(attempt)
        if attempt == 1:
            self._previous = self.base
        delay = min(self.cap, _uniform(self._rng, self.base, self._previous * 3))
        self._previous = delay
        return delay

    def reset(self) -> None:
        self._previous = self.base

    def describe(self) -> str:
        return (
            f"decorrelated-jitter backoff: each delay drawn between {_seconds(self.base)} "
            f"and 3× the previous one, at most {_seconds(self.cap)}"
        )

    def __repr__(self) -> str:
        return f"DecorrelatedJitterBackoff(base={self.base:g}, cap={self.cap:g})"


class ConstantBackoff(RetryPolicy):
    """``base`` after every failure, jittered by ±``jitter`` (default 10 %, 0 allowed); never above ``cap``.

    The jitter band is truncated at ``cap`` as in :class:`ExponentialBackoff`.
    """

    name = "constant"

    def __init__(
        self, base: float = 2.0, cap: float = 60.0, *, jitter: float = 0.1, rng: random.Random | None = None
    ) -> None:
        _check_base_cap(base, cap)
        super().__init__(base, cap)
        self.jitter = _check_jitter(jitter)
        self._rng = rng if rng is not None else random.Random()

    def next_delay(self, attempt: int) -> float:
        _check_attempt(attempt)
        return _jittered(self._rng, self.base, self.jitter, self.cap)

    def describe(self) -> str:
        spread = f", ±{self.jitter:.0%}" if self.jitter else ""
        return f"constant backoff: {_seconds(self.base)} after every failure{spread}"

    def __repr__(self) -> str:
        return f"ConstantBackoff(base={self.base:g}, cap={self.cap:g}, jitter={self.jitter:g})"
