"""An example third-party EasyRemote plugin: the ``fibonacci`` retry policy and the ``latency`` probe."""

from __future__ import annotations

from collections.abc import Callable

from easyremote_core import HealthProbe, RetryPolicy, hookimpl

from ._fibonacci import FibonacciBackoff
from ._latency import LatencyProbe

__all__ = [
    "FibonacciBackoff",
    "LatencyProbe",
    "easyremote_health_probes",
    "easyremote_retry_policies",
]


@hookimpl
def easyremote_retry_policies() -> dict[str, Callable[..., RetryPolicy]]:
    """EasyRemote calls each factory as ``factory(base=..., cap=...)``; the class is the factory."""
    return {FibonacciBackoff.name: FibonacciBackoff}


@hookimpl
def easyremote_health_probes() -> dict[str, Callable[..., HealthProbe]]:
    """EasyRemote calls each factory with no arguments."""
    return {LatencyProbe.name: LatencyProbe}
