"""The ``policies`` plugin: found through its entry point, every name resolves, ``__all__`` is complete."""

from __future__ import annotations

import inspect

import easyremote_policies
import pytest
from easyremote_policies import (
    ConstantBackoff,
    DecorrelatedJitterBackoff,
    ExponentialBackoff,
    FullJitterBackoff,
    HeartbeatProbe,
)

from easyremote_core import HealthProbe, PluginNotFoundError, RetryPolicy, get_plugin_manager


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("exponential", ExponentialBackoff),
        ("full-jitter", FullJitterBackoff),
        ("decorrelated-jitter", DecorrelatedJitterBackoff),
        ("constant", ConstantBackoff),
    ],
)
def test_every_retry_policy_resolves_by_name(name: str, cls: type[RetryPolicy]) -> None:
    policy = get_plugin_manager().retry_policy(name, base=1, cap=10)
    assert type(policy) is cls
    assert policy.name == name
    assert (policy.base, policy.cap) == (1.0, 10.0)
    assert 0 < policy.next_delay(1) <= 10


def test_the_heartbeat_probe_resolves_by_name() -> None:
    probe = get_plugin_manager().health_probe("heartbeat")
    assert isinstance(probe, HeartbeatProbe) and isinstance(probe, HealthProbe)


def test_the_plugins_come_from_the_installed_distribution() -> None:
    manager = get_plugin_manager()
    entries = {**manager.entries("retry policy"), **manager.entries("health probe")}
    for name in ["exponential", "full-jitter", "decorrelated-jitter", "constant"]:
        assert entries[name].plugin == "policies"
        assert entries[name].distribution.startswith("easyremote ")
    # Liveness is built into the core, not a plugin that could be left out.
    assert entries["heartbeat"].plugin == "easyremote.liveness"
    assert entries["heartbeat"].distribution.startswith("easyremote ")


def test_an_unknown_policy_lists_the_shipped_ones() -> None:
    with pytest.raises(PluginNotFoundError) as info:
        get_plugin_manager().retry_policy("linear", base=1, cap=10)
    for name in ["constant", "decorrelated-jitter", "exponential", "full-jitter"]:
        assert name in str(info.value)


def test_invalid_arguments_through_the_manager_name_the_parameter() -> None:
    with pytest.raises(ValueError, match=r"^cap \(1\) must be"):
        get_plugin_manager().retry_policy("decorrelated-jitter", base=2, cap=1)


def test_all_is_sorted_and_complete() -> None:
    defined_here = {
        name
        for name, value in vars(easyremote_policies).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and getattr(value, "__module__", "").startswith("easyremote_policies")
    }
    assert easyremote_policies.__all__ == sorted(easyremote_policies.__all__)
    assert set(easyremote_policies.__all__) == defined_here


def test_probes_come_from_the_environment_like_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    from easyremote import ComputeNode
    from easyremote.errors import PluginNotFoundError as NotFound

    monkeypatch.setenv("EASYREMOTE_HEALTH_PROBES", "heartbeat")
    node = ComputeNode("grpc://127.0.0.1:1", "n")  # the gRPC transport's own probe is not chosen
    assert [probe.name for probe in node._plan.probes] == ["heartbeat"]
    monkeypatch.setenv("EASYREMOTE_HEALTH_PROBES", " grpc-channel-state , heartbeat ")
    assert [p.name for p in ComputeNode("tcp://127.0.0.1:1", "n")._plan.probes] == ["grpc-channel-state", "heartbeat"]
    explicit = ComputeNode("grpc://127.0.0.1:1", "n", health_probes=["grpc-channel-state"])
    assert [p.name for p in explicit._plan.probes] == ["grpc-channel-state", "heartbeat"]  # an argument wins
    monkeypatch.setenv("EASYREMOTE_HEALTH_PROBES", "smoke-detector")
    with pytest.raises(NotFound, match="smoke-detector"):
        ComputeNode("grpc://127.0.0.1:1", "n")
