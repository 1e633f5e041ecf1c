"""Several gateways: a node registers on each, a client moves to another at once when its gateway dies."""

from __future__ import annotations

import socket
import time

import anyio
import psutil
import pytest

from easyremote import AsyncClient
from easyremote_core import _address
from easyremote_core._address import Address, expand, parse_addresses
from easyremote_core.testing.processes import GatewayProcess, PythonProcess, free_port

from .conftest import FAST, LogTimeline, calling, gateway_process, in_thread, scenario_node

pytestmark = pytest.mark.timeout(90)


def test_address_lists() -> None:
    assert parse_addresses("a:1, tcp://b:2,a:1") == (Address("a", 1), Address("b", 2, "tcp"))
    assert parse_addresses(["a:1", "[::1]:3"]) == (Address("a", 1), Address("::1", 3))


async def test_a_name_with_several_addresses_is_several_gateways(monkeypatch: pytest.MonkeyPatch) -> None:
    async def resolve(host: str, port: int, **kwargs: object) -> list[tuple]:
        assert host == "gateways.test"
        v4 = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ("127.0.0.2", "127.0.0.1", "127.0.0.2")]
        return [*v4, (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0))]

    monkeypatch.setattr(_address.anyio, "getaddrinfo", resolve)
    found = await expand(Address("gateways.test", 8080, "tcp"))
    assert found == (Address("127.0.0.1", 8080, "tcp"), Address("127.0.0.2", 8080, "tcp"))  # IPv4 first, once each
    assert {a.server_name for a in found} == {"gateways.test"}  # TLS checks the certificate against the name
    assert await expand(Address("127.0.0.1", 1)) == (Address("127.0.0.1", 1),)  # an address is itself


async def _both_registered(timeline: LogTimeline, after: float, count: int = 2) -> None:
    await timeline.wait_for_count("Registered to VPS successfully", count, after=after)


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
async def test_a_node_serves_through_every_gateway_and_calls_move_when_one_dies(transport: str, timeline) -> None:
    with gateway_process(transport) as first, gateway_process(transport) as second:
        addresses = f"{transport}://{first.address},{transport}://{second.address}"
        node = scenario_node(addresses)
        begun = anyio.current_time()
        async with node:
            await _both_registered(timeline, begun)
            assert node.status().gateways == {first.address: "ready", second.address: "ready"}
            for one in (first, second):  # registered on each: each gateway alone routes to it
                async with AsyncClient(f"{transport}://{one.address}", timeout=10) as alone:
                    assert [n.node_id for n in await alone.list_nodes()] == ["scenario-node"]
                    assert await alone.execute("add", 2, 3) == 5
            # A long backoff: the client must not wait for it while another gateway is ready.
            async with calling(addresses, reconnect_interval=5.0, max_reconnect_interval=10.0) as calls:
                await calls.success_after(anyio.current_time())
                killed = anyio.current_time()
                await in_thread(first.kill)
                served = await calls.success_after(killed)
                assert served - killed < 1.0
                assert node.status().state == "ready"  # it still has a gateway
                assert node.status().gateways[first.address] == "reconnecting"
                restarted = anyio.current_time()
                await in_thread(first.start)
                await _both_registered(timeline, restarted, count=1)
                assert node.status().gateways == {first.address: "ready", second.address: "ready"}
                await calls.success_after(anyio.current_time())
            assert calls.failures() == []


async def test_every_address_of_a_name_gets_a_link(monkeypatch: pytest.MonkeyPatch, timeline) -> None:
    port = free_port("127.0.0.1")
    real = _address.anyio.getaddrinfo

    async def resolve(host: str, port: int, **kwargs: object) -> list[tuple]:
        if host != "gateways.test":
            return await real(host, port, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ("127.0.0.1", "127.0.0.2")]

    monkeypatch.setattr(_address.anyio, "getaddrinfo", resolve)
    args = ("--transport", "tcp", "--heartbeat-timeout", "2")
    with GatewayProcess(port=port, args=args) as one, GatewayProcess(port=port, host="127.0.0.2", args=args) as two:
        one.start()
        two.start()
        node = scenario_node(f"tcp://gateways.test:{port}")
        begun = anyio.current_time()
        async with node:
            await _both_registered(timeline, begun)
            assert node.status().gateways == {f"127.0.0.1:{port}": "ready", f"127.0.0.2:{port}": "ready"}
            async with AsyncClient(f"tcp://gateways.test:{port}", timeout=10, **FAST) as client:
                assert await client.execute("add", 1, 1) == 2


NODE_SCRIPT = """
import sys
from easyremote import ComputeNode

node = ComputeNode(sys.argv[1], "counted-node", heartbeat_interval=0.5, heartbeat_timeout=2.0)

@node.register
def add(a: int, b: int) -> int:
    return a + b

node.serve()
"""


def _footprint(transport: str, gateways: list[GatewayProcess]) -> tuple[float, int]:
    """RSS (MiB) and open descriptors of a node process registered on ``gateways``, once settled."""
    addresses = ",".join(f"{transport}://{g.address}" for g in gateways)
    with PythonProcess(NODE_SCRIPT, args=(addresses,), name="node") as node:
        node.start()
        node.wait_for_line("Registered to VPS successfully", 20.0, count=len(gateways))
        time.sleep(1.0)  # a few heartbeats: pools and buffers reach their steady size
        process = psutil.Process(node.pid)
        return process.memory_info().rss / 2**20, process.num_fds()


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
def test_three_gateways_cost_a_node_at_most_three_times_one(transport: str) -> None:
    args = ("--transport", transport, "--heartbeat-timeout", "2")
    with GatewayProcess(args=args) as a, GatewayProcess(args=args) as b, GatewayProcess(args=args) as c:
        for gateway in (a, b, c):
            gateway.start()
        one_rss, one_fds = _footprint(transport, [a])
        three_rss, three_fds = _footprint(transport, [a, b, c])
    print(f"{transport}: 1 gateway {one_rss:.1f} MiB, {one_fds} fds; 3 gateways {three_rss:.1f} MiB, {three_fds} fds")
    assert three_rss <= 3 * one_rss
    assert three_fds <= 3 * one_fds
    assert three_fds > one_fds  # each gateway has its own link


async def test_a_name_is_followed_to_the_addresses_it_gains_and_loses(monkeypatch: pytest.MonkeyPatch,
                                                                     timeline: LogTimeline) -> None:
    """A gateway replaced on a new address (a pod rescheduled behind a headless Service): the node
    links to the new address within its health_check_interval and drops the old one once it is down."""
    port = free_port("127.0.0.1")
    real = _address.anyio.getaddrinfo
    hosts = ["127.0.0.1", "127.0.0.2"]

    async def resolve(host: str, port: int, **kwargs: object) -> list[tuple]:
        if host != "gateways.test":
            return await real(host, port, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in hosts]

    monkeypatch.setattr(_address.anyio, "getaddrinfo", resolve)
    args = ("--transport", "tcp", "--heartbeat-timeout", "2")
    with GatewayProcess(port=port, args=args) as one, GatewayProcess(port=port, host="127.0.0.2", args=args) as two, \
            GatewayProcess(port=port, host="127.0.0.3", args=args) as three:
        for gateway in (one, two, three):
            gateway.start()
        node = scenario_node(f"tcp://gateways.test:{port}", health_check_interval=0.5)
        begun = anyio.current_time()
        async with node:
            await _both_registered(timeline, begun)
            await in_thread(two.kill)
            hosts[1] = "127.0.0.3"  # the gateway that was at .2 is at .3 now
            moved = anyio.current_time()
            with anyio.fail_after(15):
                await timeline.wait_for("Registered to VPS successfully", after=moved)
                await timeline.wait_for("no longer resolves to 127.0.0.2", after=moved, logger="easyremote")
            assert node.status().gateways == {f"127.0.0.1:{port}": "ready", f"127.0.0.3:{port}": "ready"}
