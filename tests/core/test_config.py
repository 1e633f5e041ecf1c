"""Parameters: the guide's forms construct; bad values raise ConfigurationError naming the rule."""

from __future__ import annotations

import pytest

from easyremote import AsyncClient, ComputeNode, Gateway
from easyremote.errors import ConfigurationError, PluginNotFoundError


def test_positional_and_keyword_forms() -> None:
    node = ComputeNode("server:8080", "node-id")
    assert node.node_id == "node-id" and str(node.address) == "server:8080"
    node = ComputeNode(vps_address="server:8080", node_id="my-robust-node", reconnect_interval=3,
                       max_retry_attempts=10, heartbeat_interval=5, heartbeat_timeout=15,
                       health_check_interval=30, connection_timeout=10, execution_timeout=120, max_queue_size=1000)
    assert node.settings.reconnect_interval == 3 and node.settings.max_retry_attempts == 10
    assert node.execution_timeout == 120 and node.max_queue_size == 1000


def test_defaults_follow_the_spec() -> None:
    node = ComputeNode("server:8080")
    assert node.node_id  # hostname-based
    s = node.settings
    assert (s.reconnect_interval, s.max_reconnect_interval, s.max_retry_attempts) == (2.0, 60.0, None)
    assert (s.heartbeat_interval, s.heartbeat_timeout, s.health_check_interval, s.connection_timeout) == \
        (5.0, 15.0, 30.0, 10.0)
    assert (node.execution_timeout, node.max_queue_size, node.max_message_size) == (300.0, 1000, 64 * 1024 * 1024)


@pytest.mark.parametrize(("options", "message"), [
    ({"heartbeat_interval": 5, "heartbeat_timeout": 5},
     r"heartbeat_timeout \(5\) must be greater than heartbeat_interval \(5\)"),
    ({"reconnect_interval": 0}, r"reconnect_interval \(0\) must be greater than 0"),
    ({"reconnect_interval": 10, "max_reconnect_interval": 5},
     r"max_reconnect_interval \(5\) must be at least reconnect_interval \(10\)"),
    ({"max_retry_attempts": 0}, r"max_retry_attempts \(0\) must be at least 1"),
    ({"max_retry_attempts": 2.5}, r"max_retry_attempts must be a whole number"),
    ({"connection_timeout": -1}, r"connection_timeout \(-1\) must be greater than 0"),
    ({"execution_timeout": "soon"}, r"execution_timeout must be a number"),
    ({"max_queue_size": 0}, r"max_queue_size \(0\) must be at least 1"),
    ({"heartbeat_interval": True}, r"heartbeat_interval must be a number"),
])
def test_bad_node_parameters(options: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ComputeNode("server:8080", "n", **options)


@pytest.mark.parametrize(("address", "message"), [
    ("", "vps_address must be a non-empty"), ("server", "must have the form 'host:port'"),
    ("server:http", "is not a number"), ("server:70000", "port must be between 1 and 65535"),
    ("a:1,,b:2", "has an empty address in its list"), ("a:1, b", "'b' must have the form"),
    ([], "must name at least one gateway"), (["a:1", 5], "must be 'host:port' strings"),
    (5, "must be a 'host:port' string or a list of them"),
])
def test_bad_addresses(address: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ComputeNode(address, "n")


def test_bad_gateway_parameters() -> None:
    with pytest.raises(ConfigurationError, match=r"port \(-1\) must be at least 0"):
        Gateway(port=-1)
    with pytest.raises(ConfigurationError, match=r"heartbeat_timeout \(0\) must be greater than 0"):
        Gateway(heartbeat_timeout=0)
    with pytest.raises(ConfigurationError, match="auth_token must be a non-empty string"):
        Gateway(auth_token="")


def test_configuration_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        ComputeNode("server:8080", "n", heartbeat_timeout=1, heartbeat_interval=2)


def test_unknown_plugin_names_list_what_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PluginNotFoundError, match=r"no transport named 'carrier-pigeon'; available: .*grpc") as caught:
        ComputeNode("server:8080", "n", transport="carrier-pigeon")
    assert {"grpc", "tcp", "memory"} <= set(caught.value.available)
    with pytest.raises(PluginNotFoundError, match="no retry policy named 'hope'"):
        AsyncClient("server:8080", retry_policy="hope")
    with pytest.raises(PluginNotFoundError, match="no health probe named 'tea-leaves'"):
        ComputeNode("server:8080", "n", health_probes=["tea-leaves"])


def test_selection_by_scheme_environment_and_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ComputeNode("server:8080", "n")._plan.transport.name == "grpc"
    assert ComputeNode("tcp://server:8080", "n")._plan.transport.name == "tcp"
    monkeypatch.setenv("EASYREMOTE_TRANSPORT", "tcp")
    assert ComputeNode("server:8080", "n")._plan.transport.name == "tcp"
    assert ComputeNode("server:8080", "n", transport="memory")._plan.transport.name == "memory"
    monkeypatch.setenv("EASYREMOTE_RETRY_POLICY", "constant")
    assert ComputeNode("server:8080", "n")._plan.policy.name == "constant"
    assert ComputeNode("server:8080", "n", retry_policy="full-jitter")._plan.policy.name == "full-jitter"
    probes = ComputeNode("grpc://server:8080", "n")._plan.probes
    assert [p.name for p in probes] == ["grpc-channel-state", "heartbeat"]
