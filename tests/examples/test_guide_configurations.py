"""Every ComputeNode configuration in the reconnection guide, written exactly as the guide writes it, runs.

Only the gateway address differs: each node dials a real in-process gateway on loopback,
registers, and serves one call from an AsyncClient. The module shares one gateway and one
event loop: a grpc.aio completion left over from a closed loop would otherwise fail a later
test with "Event loop is closed".
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from easyremote import AsyncClient, ComputeNode, ConfigurationError, Gateway

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def gateway() -> AsyncIterator[Gateway]:
    async with Gateway(port=0, host="127.0.0.1") as gw:
        yield gw


# -- the guide's configurations, verbatim but for the address ------------------------------


def basic(address: str) -> ComputeNode:  # 基础配置
    node = ComputeNode(
        vps_address=address,
        node_id="my-robust-node",
        # 重连配置
        reconnect_interval=3,           # 基础重连间隔
        max_retry_attempts=10,          # 最大重试次数
        # 健康检查配置
        heartbeat_interval=5,           # 心跳间隔
        heartbeat_timeout=15,           # 心跳超时
        health_check_interval=30,       # 健康检查间隔
        connection_timeout=10,          # 连接超时
    )
    return node


def high_availability(address: str) -> ComputeNode:  # 高可用配置
    node = ComputeNode(
        vps_address=address,
        node_id="high-availability-node",
        # 更激进的重连策略
        reconnect_interval=1,           # 1秒快速重连
        max_retry_attempts=20,          # 更多重试次数
        # 更频繁的健康检查
        heartbeat_interval=2,           # 2秒心跳
        heartbeat_timeout=8,            # 8秒心跳超时
        health_check_interval=10,       # 10秒健康检查
        connection_timeout=5,           # 5秒连接超时
        # 性能优化
        execution_timeout=120,          # 2分钟执行超时
        max_queue_size=1000            # 大队列
    )
    return node


def unstable_network(address: str) -> ComputeNode:  # 网络不稳定环境配置
    node = ComputeNode(
        vps_address=address,
        node_id="unstable-network-node",
        # 更宽松的重连策略
        reconnect_interval=5,           # 5秒重连间隔
        max_retry_attempts=50,          # 大量重试
        # 更宽松的超时设置
        heartbeat_interval=10,          # 10秒心跳
        heartbeat_timeout=30,           # 30秒心跳超时
        health_check_interval=60,       # 1分钟健康检查
        connection_timeout=20,          # 20秒连接超时
    )
    return node


def old_positional(address: str) -> ComputeNode:  # 升级指南: 旧版本
    node = ComputeNode(address, "node-id")
    return node


def new_keywords(address: str) -> ComputeNode:  # 升级指南: 新版本（推荐配置）
    node = ComputeNode(
        vps_address=address,
        node_id="node-id",
        reconnect_interval=3,
        max_retry_attempts=10,
        heartbeat_timeout=15
    )
    return node


def production(address: str) -> ComputeNode:  # 最佳实践: 生产环境配置
    node = ComputeNode(
        vps_address=address,
        node_id=f"prod-node-{socket.gethostname()}",
        reconnect_interval=5,
        max_retry_attempts=20,
        heartbeat_interval=10,
        heartbeat_timeout=30,
        health_check_interval=60
    )
    return node


def development(address: str) -> ComputeNode:  # 最佳实践: 开发环境配置
    node = ComputeNode(
        vps_address=address,
        node_id="dev-node",
        reconnect_interval=1,
        max_retry_attempts=5,
        heartbeat_interval=3,
        heartbeat_timeout=10
    )
    return node


# Where each parameter must land; what a configuration leaves out keeps its documented default.
DEFAULTS: dict[str, Any] = dict(
    reconnect_interval=2.0, max_reconnect_interval=60.0, max_retry_attempts=None, heartbeat_interval=5.0,
    heartbeat_timeout=15.0, health_check_interval=30.0, connection_timeout=10.0,
    execution_timeout=300.0, max_queue_size=1000,
)
CONFIGURATIONS: list[tuple[Callable[[str], ComputeNode], str, dict[str, Any]]] = [
    (basic, "my-robust-node", dict(reconnect_interval=3, max_retry_attempts=10, heartbeat_interval=5,
                                   heartbeat_timeout=15, health_check_interval=30, connection_timeout=10)),
    (high_availability, "high-availability-node", dict(
        reconnect_interval=1, max_retry_attempts=20, heartbeat_interval=2, heartbeat_timeout=8,
        health_check_interval=10, connection_timeout=5, execution_timeout=120, max_queue_size=1000)),
    (unstable_network, "unstable-network-node", dict(
        reconnect_interval=5, max_retry_attempts=50, heartbeat_interval=10, heartbeat_timeout=30,
        health_check_interval=60, connection_timeout=20)),
    (old_positional, "node-id", {}),
    (new_keywords, "node-id", dict(reconnect_interval=3, max_retry_attempts=10, heartbeat_timeout=15)),
    (production, f"prod-node-{socket.gethostname()}", dict(
        reconnect_interval=5, max_retry_attempts=20, heartbeat_interval=10, heartbeat_timeout=30,
        health_check_interval=60)),
    (development, "dev-node", dict(reconnect_interval=1, max_retry_attempts=5, heartbeat_interval=3,
                                   heartbeat_timeout=10)),
]


def landed(node: ComputeNode) -> dict[str, Any]:
    settings = node.settings
    return dict(
        reconnect_interval=settings.reconnect_interval, max_reconnect_interval=settings.max_reconnect_interval,
        max_retry_attempts=settings.max_retry_attempts, heartbeat_interval=settings.heartbeat_interval,
        heartbeat_timeout=settings.heartbeat_timeout, health_check_interval=settings.health_check_interval,
        connection_timeout=settings.connection_timeout, execution_timeout=node.execution_timeout,
        max_queue_size=node.max_queue_size,
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("configure", "node_id", "given"), CONFIGURATIONS, ids=[c[0].__name__ for c in CONFIGURATIONS])
async def test_guide_configuration_lands_and_serves_a_call(
    gateway: Gateway, configure: Callable[[str], ComputeNode], node_id: str, given: dict[str, Any]
) -> None:
    address = f"127.0.0.1:{gateway.port}"
    node = configure(address)
    assert node.node_id == node_id
    assert landed(node) == {**DEFAULTS, **given}

    @node.register
    def add(a: int, b: int) -> int:
        return a + b

    async with node:
        with anyio.fail_after(20):
            await node.wait_ready()
            async with AsyncClient(address, timeout=10) as client:
                assert await client.execute("add", 2, 3) == 5
        # The guide's diagnostics, on a node that is connected and idle.
        assert node._connection_healthy is True
        assert node._reconnect_count == 0
        assert len(node._active_executions) == 0
        assert len(node._execution_tasks) == 0
        assert node.status().state == "ready"
        assert gateway.nodes()[node_id] == "ready"


@pytest.mark.timeout(30)
async def test_last_heartbeat_time_is_current_while_connected(gateway: Gateway) -> None:
    """The guide's '最后心跳' diagnostic shows when the gateway was last heard from."""
    node = development(f"127.0.0.1:{gateway.port}")
    before = time.time()
    async with node:
        with anyio.fail_after(20):
            await node.wait_ready()
        # The gateway's "registered" answer is a frame from it: the node has heard from it.
        assert node._last_heartbeat_time is not None
        assert before <= node._last_heartbeat_time <= time.time()
        assert node.status().last_heartbeat_time == node._last_heartbeat_time


INVALID: list[tuple[dict[str, Any], str]] = [
    (dict(heartbeat_interval=5, heartbeat_timeout=5),
     "heartbeat_timeout (5) must be greater than heartbeat_interval (5)"),
    (dict(heartbeat_interval=10, heartbeat_timeout=8),
     "heartbeat_timeout (8) must be greater than heartbeat_interval (10)"),
    (dict(reconnect_interval=0), "reconnect_interval (0) must be greater than 0"),
    (dict(reconnect_interval=-1), "reconnect_interval (-1) must be greater than 0"),
    (dict(reconnect_interval=90), "max_reconnect_interval (60) must be at least reconnect_interval (90)"),
    (dict(max_retry_attempts=0), "max_retry_attempts (0) must be at least 1"),
    (dict(max_retry_attempts=2.5), "max_retry_attempts must be a whole number, got 2.5"),
    (dict(heartbeat_interval=0), "heartbeat_interval (0) must be greater than 0"),
    (dict(health_check_interval=0), "health_check_interval (0) must be greater than 0"),
    (dict(connection_timeout=-5), "connection_timeout (-5) must be greater than 0"),
    (dict(execution_timeout=0), "execution_timeout (0) must be greater than 0"),
    (dict(max_queue_size=0), "max_queue_size (0) must be at least 1"),
    (dict(heartbeat_timeout="15"), "heartbeat_timeout must be a number, got '15'"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("options", "message"), INVALID, ids=[m.split(" ")[0] for _, m in INVALID])
def test_invalid_values_name_the_parameter_and_the_rule(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ComputeNode(vps_address="127.0.0.1:8080", node_id="my-robust-node", **options)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("address", ["", "server", "server:port", "server:70000"])
def test_a_bad_address_names_vps_address(address: str) -> None:
    with pytest.raises(ConfigurationError, match="vps_address"):
        ComputeNode(address, "node-id")
