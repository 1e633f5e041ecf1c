"""The shipped retry policies and health probes of EasyRemote, registered as the ``policies`` plugin."""

from __future__ import annotations

from collections.abc import Callable

from easyremote_core import HealthProbe, RetryPolicy, hookimpl

from ._backoff import ConstantBackoff, DecorrelatedJitterBackoff, ExponentialBackoff, FullJitterBackoff
from ._heartbeat import HeartbeatProbe

__all__ = [
    "ConstantBackoff",
    "DecorrelatedJitterBackoff",
    "ExponentialBackoff",
    "FullJitterBackoff",
    "HeartbeatProbe",
    "easyremote_health_probes",
    "easyremote_retry_policies",
]


@hookimpl
def easyremote_retry_policies() -> dict[str, Callable[..., RetryPolicy]]:
    """The four shipped retry policies, by name."""
    policies: tuple[type[RetryPolicy], ...] = (
        ExponentialBackoff,
        FullJitterBackoff,
        DecorrelatedJitterBackoff,
        ConstantBackoff,
    )
    return {policy.name: policy for policy in policies}


@hookimpl
def easyremote_health_probes() -> dict[str, Callable[..., HealthProbe]]:
    """The transport-neutral heartbeat probe."""
    return {HeartbeatProbe.name: HeartbeatProbe}
