"""The shipped retry policies of EasyRemote, registered as the ``policies`` plugin."""

from __future__ import annotations

from collections.abc import Callable

from easyremote_core import RetryPolicy, hookimpl
from easyremote_core._heartbeat import HeartbeatProbe as HeartbeatProbe  # now in the core; importable here too

from ._backoff import ConstantBackoff, DecorrelatedJitterBackoff, ExponentialBackoff, FullJitterBackoff

__all__ = [
    "ConstantBackoff",
    "DecorrelatedJitterBackoff",
    "ExponentialBackoff",
    "FullJitterBackoff",
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

