"""Validation of user-facing parameters: a bad value is a ``ConfigurationError`` naming the rule."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._errors import ConfigurationError

#: The ranges a peer may announce, and so the ranges a node or client may be configured with.
HEARTBEAT_INTERVAL_RANGE = (0.01, 3600.0)
HEARTBEAT_TIMEOUT_RANGE = (0.02, 86400.0)


def number(name: str, value: object, *, minimum: float | None = None, above: float | None = None,
           maximum: float | None = None) -> float:
    """``value`` as a float; ``minimum`` and ``maximum`` are inclusive, ``above`` exclusive."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigurationError(f"{name} ({value:g}) must be at most {maximum:g}")
    if above is not None and not value > above:
        raise ConfigurationError(f"{name} ({value:g}) must be greater than {above:g}")
    if minimum is not None and value < minimum:
        raise ConfigurationError(f"{name} ({value:g}) must be at least {minimum:g}")
    return float(value)


def whole(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{name} ({value}) must be at least {minimum}")
    return value


@dataclass(frozen=True)
class LinkSettings:
    """Timing of one supervised connection (node or client)."""

    reconnect_interval: float = 2.0
    max_reconnect_interval: float = 60.0
    max_retry_attempts: int | None = None
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 15.0
    health_check_interval: float = 30.0
    connection_timeout: float = 10.0

    def __post_init__(self) -> None:
        number("reconnect_interval", self.reconnect_interval, above=0)
        number("max_reconnect_interval", self.max_reconnect_interval, above=0)
        if self.max_reconnect_interval < self.reconnect_interval:
            raise ConfigurationError(
                f"max_reconnect_interval ({self.max_reconnect_interval:g}) must be at least "
                f"reconnect_interval ({self.reconnect_interval:g})"
            )
        if self.max_retry_attempts is not None:
            whole("max_retry_attempts", self.max_retry_attempts, minimum=1)
        number("heartbeat_interval", self.heartbeat_interval, above=0, minimum=HEARTBEAT_INTERVAL_RANGE[0],
               maximum=HEARTBEAT_INTERVAL_RANGE[1])
        number("heartbeat_timeout", self.heartbeat_timeout, above=0, minimum=HEARTBEAT_TIMEOUT_RANGE[0],
               maximum=HEARTBEAT_TIMEOUT_RANGE[1])
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ConfigurationError(
                f"heartbeat_timeout ({self.heartbeat_timeout:g}) must be greater than "
                f"heartbeat_interval ({self.heartbeat_interval:g})"
            )
        number("health_check_interval", self.health_check_interval, above=0)
        number("connection_timeout", self.connection_timeout, above=0)
