"""The ``fibonacci`` retry policy: delays grow as 1, 1, 2, 3, 5, 8 … times ``base``."""

from __future__ import annotations

import math
import random

from easyremote_core import ConfigurationError, RetryPolicy


class FibonacciBackoff(RetryPolicy):
    """Attempt *n* waits about ``min(cap, base·F(n))`` with ``F = 1, 1, 2, 3, 5 …``.

    Gentler than doubling: the delays grow by the golden ratio (about 1.6) per attempt.
    Each delay is drawn uniformly from ``[d·(1 - jitter), min(cap, d·(1 + jitter))]``
    for the nominal delay ``d``, so it never exceeds ``cap`` and never falls below
    ``d·(1 - jitter)``. The policy keeps no state between attempts.
    """

    name = "fibonacci"

    def __init__(
        self, base: float = 2.0, cap: float = 60.0, *, jitter: float = 0.2, rng: random.Random | None = None
    ) -> None:
        if not math.isfinite(base) or base <= 0:
            raise ConfigurationError(f"base ({base}) must be a finite number greater than 0")
        if not math.isfinite(cap) or cap < base:
            raise ConfigurationError(f"cap ({cap}) must be a finite number at least base ({base})")
        if not 0 <= jitter < 1:  # also false for NaN
            raise ConfigurationError(f"jitter ({jitter}) must be at least 0 and less than 1")
        super().__init__(base, cap)
        self.jitter = float(jitter)
        self._rng = rng if rng is not None else random.Random()

    def nominal_delay(self, attempt: int) -> float:
        """``min(cap, base·F(attempt))``; stops counting once the cap is reached, so any attempt is cheap."""
        if attempt < 1:
            raise ValueError(f"attempt ({attempt}) must be at least 1 (attempts are counted from 1)")
        previous, current = 0, 1
        for _ in range(attempt - 1):
            if self.base * current >= self.cap:
                break
            previous, current = current, previous + current
        return min(self.cap, self.base * current)

    def next_delay(self, attempt: int) -> float:
        nominal = self.nominal_delay(attempt)
        low = nominal * (1.0 - self.jitter)
        high = min(self.cap, nominal * (1.0 + self.jitter))
        return min(high, max(low, self._rng.uniform(low, high)))

    def describe(self) -> str:
        steps = ", ".join(f"{self.nominal_delay(n):g}s" for n in range(1, 6))
        return f"fibonacci backoff: {steps} … up to {self.cap:g}s, each ±{self.jitter:.0%}"

    def __repr__(self) -> str:
        return f"FibonacciBackoff(base={self.base:g}, cap={self.cap:g}, jitter={self.jitter:g})"
