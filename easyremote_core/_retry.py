"""The retry policy interface: how long to wait before reconnect attempt n."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ._errors import ConfigurationError


class RetryPolicy(ABC):
    """Delays between consecutive failed attempts.

    ``next_delay(1)`` is the wait after the first failure; ``None`` gives up: the node
    or client stops with ``GatewayUnavailableError``. A policy may keep state
    (decorrelated jitter does); ``reset()`` is called once the gateway has accepted
    a registration.
    """

    name: str = ""

    def __init__(self, base: float = 2.0, cap: float = 60.0) -> None:
        if base <= 0:
            raise ConfigurationError(f"base ({base}) must be greater than 0")
        if cap < base:
            raise ConfigurationError(f"cap ({cap}) must be at least base ({base})")
        self.base = float(base)
        self.cap = float(cap)

    @abstractmethod
    def next_delay(self, attempt: int) -> float | None:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), or ``None`` to give up."""

    def reset(self) -> None:
        """Forget earlier failures."""
