"""Liveness: blocked functions keep their node, silent nodes are evicted, killed nodes fail calls at once."""

from __future__ import annotations

import time

import anyio
import anyio.to_thread
import pytest

from easyremote import AsyncClient, ComputeNode, Gateway
from easyremote.errors import NodeLostError
from easyremote_core import PluginManager, hookimpl
from easyremote_core.testing.processes import PythonProcess

from .conftest import address, client_for, running_node

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

NODE_SCRIPT = """
import logging, sys, time
from easyremote import ComputeNode
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
node = ComputeNode(sys.argv[1], sys.argv[2], heartbeat_interval=0.3, heartbeat_timeout=1.5,
                   reconnect_interval=0.2)

@node.register
def work(seconds):
    print("work started", flush=True)
    time.sleep(seconds)
    return "done"

@node.register
def whoami():
    return "subprocess"

node.serve()
"""


class GatewayEvents:
    """Records node events from the gateway's observer hooks."""

    def __init__(self) -> None:
        self.lost: list[tuple[float, str, str]] = []
        self.registered: list[tuple[float, str]] = []
        self.changed = anyio.Event()

    @hookimpl
    def easyremote_node_lost(self, gateway_id: str, node_id: str, reason: str) -> None:
        self.lost.append((anyio.current_time(), node_id, reason))
        self._wake()

    @hookimpl
    def easyremote_node_registered(self, gateway_id: str, node_id: str, functions: list[str]) -> None:
        self.registered.append((anyio.current_time(), node_id))
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, predicate) -> None:
        while not predicate():
            await self.changed.wait()


def observed_plugins() -> tuple[PluginManager, GatewayEvents]:
    manager = PluginManager()
    manager.load_entry_points()
    events = GatewayEvents()
    manager.register(events)
    return manager, events


def node_process(gw: Gateway, node_id: str) -> PythonProcess:
    return PythonProcess(NODE_SCRIPT, args=(address(gw), node_id), name=node_id)


async def wait_line(process: PythonProcess, text: str, timeout: float = 20) -> None:
    await anyio.to_thread.run_sync(process.wait_for_line, text, timeout)


async def test_a_sync_function_blocking_past_heartbeat_timeout_keeps_its_node(gateway) -> None:
    def setup(node: ComputeNode) -> None:
        @node.register
        def block(seconds: float) -> str:
            time.sleep(seconds)  # holds a worker thread, never the node's event loop
            return "finished"

    async with running_node(gateway, "n1", setup, heartbeat_interval=0.2, heartbeat_timeout=0.8) as node, \
            client_for(gateway) as client:
        # longer than the node's heartbeat_timeout and the gateway's (3 s)
        assert await client.execute("block", 3.5) == "finished"
        assert node._reconnect_count == 0 and node._connection_healthy
        assert gateway.nodes() == {"n1": "ready"}


@pytest.mark.parametrize("transport_name", ["grpc", "tcp"])
async def test_gateway_evicts_a_node_it_stops_hearing_from(transport_name: str, caplog) -> None:
    manager, events = observed_plugins()
    async with Gateway(port=0, host="127.0.0.1", transport=transport_name, heartbeat_timeout=1.5,
                       node_grace=0.5, plugins=manager) as gw:
        with node_process(gw, "frozen") as process:
            process.start()
            await wait_line(process, "Registered to VPS successfully")
            process.stop()  # SIGSTOP: its socket stays open, it just goes silent
            stopped = anyio.current_time()
            with anyio.fail_after(10):
                await events.wait_for(lambda: events.lost)
            when, node_id, reason = events.lost[0]
            assert node_id == "frozen" and "Heartbeat timeout" in reason
            assert 1.0 < when - stopped < 1.5 * 1.1 + 0.3  # heartbeat_timeout (+10 %), from the last frame
            process.cont()
    # The gateway watches many peers: its warning says which one went silent, once.
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Heartbeat timeout")]
    assert len(warnings) == 1 and warnings[0].endswith("> 1.5s (node frozen)"), warnings


@pytest.mark.parametrize("transport_name", ["grpc", "tcp"])
async def test_a_node_registering_again_replaces_its_stale_session(transport_name: str) -> None:
    manager, events = observed_plugins()
    async with Gateway(port=0, host="127.0.0.1", transport=transport_name, heartbeat_timeout=30,
                       plugins=manager) as gw:
        with node_process(gw, "same-id") as process:
            process.start()
            await wait_line(process, "Registered to VPS successfully")
            process.stop()  # the old session is now half-dead; the gateway would wait 30 s to notice

            def setup(node: ComputeNode) -> None:
                @node.register
                def whoami() -> str:
                    return "replacement"

            started = anyio.current_time()
            async with running_node(gw, "same-id", setup), client_for(gw) as client:
                assert anyio.current_time() - started < 5
                assert await client.execute("whoami") == "replacement"
                assert [n.node_id for n in await client.list_nodes()] == ["same-id"]
            assert any("replaced" in reason for _, _, reason in events.lost)
            process.kill()


@pytest.mark.parametrize("transport_name", ["grpc", "tcp"])
async def test_killing_the_node_fails_its_call_within_a_second(transport_name: str) -> None:
    async with Gateway(port=0, host="127.0.0.1", transport=transport_name) as gw:
        with node_process(gw, "doomed") as process:
            process.start()
            await wait_line(process, "Registered to VPS successfully")
            async with AsyncClient(address(gw), timeout=30) as client:
                async with anyio.create_task_group() as tg:
                    outcome: dict[str, object] = {}

                    async def call() -> None:
                        try:
                            await client.execute("work", 5)
                        except NodeLostError as exc:
                            outcome["error"] = exc
                        outcome["at"] = anyio.current_time()

                    tg.start_soon(call)
                    await wait_line(process, "work started")
                    killed = anyio.current_time()
                    process.kill()  # SIGKILL
                assert isinstance(outcome.get("error"), NodeLostError), outcome
                assert "doomed" in str(outcome["error"])
                assert outcome["at"] - killed < 1.0
