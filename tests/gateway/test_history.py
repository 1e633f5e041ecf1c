"""What the gateway knows it served (SPEC §8): calls for functions served before wait for their
nodes after a restart or a long cut; a function never served fails at once."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from easyremote import AsyncClient, ComputeNode, Gateway
from easyremote.errors import NoNodeAvailableError
from easyremote_core.testing.chaos import ChaosProxy
from easyremote_core.testing.processes import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

QUICK = dict(heartbeat_interval=0.5, heartbeat_timeout=2.0, reconnect_interval=0.2, max_reconnect_interval=1.0)


def adder(address: str, node_id: str = "adder", **options: object) -> ComputeNode:
    node = ComputeNode(address, node_id, **{**QUICK, **options})

    @node.register
    def add(a: int, b: int) -> int:
        return a + b

    return node


async def _fails_at_once(client: AsyncClient, function: str) -> None:
    began = anyio.current_time()
    with pytest.raises(NoNodeAvailableError, match=f"no node serves '{function}'"):
        await client.execute(function, 1, 2)
    assert anyio.current_time() - began < 0.1


async def test_a_function_never_served_fails_at_once_on_a_fresh_gateway() -> None:
    async with Gateway(port=0, host="127.0.0.1", transport="tcp") as gateway, \
            AsyncClient(f"tcp://127.0.0.1:{gateway.port}", timeout=10, **QUICK) as client:
        await client.wait_ready()
        await _fails_at_once(client, "typo_of_add")


async def test_after_a_restart_the_state_file_makes_calls_wait_for_their_nodes(tmp_path: Path) -> None:
    state = tmp_path / "state" / "gateway.sqlite3"
    port = free_port()
    async with Gateway(port=port, host="127.0.0.1", transport="tcp", state_file=state) as gateway:
        async with adder(f"tcp://127.0.0.1:{port}") as node:
            await node.wait_ready()
    with sqlite3.connect(state) as db:  # what it kept: the node, its functions, when it was last seen
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        rows = db.execute("SELECT node_id, functions, labels, last_seen FROM nodes").fetchall()
    assert [(node_id, functions, labels) for node_id, functions, labels, _ in rows] == [("adder", '["add"]', "{}")]
    assert rows[0][3] > 0

    # A new gateway process would read the same file: so does a new Gateway.
    async with Gateway(port=port, host="127.0.0.1", transport="tcp", state_file=state, startup_grace=20) as gateway, \
            AsyncClient(f"tcp://127.0.0.1:{port}", timeout=10, **QUICK) as client:
        await client.wait_ready()
        await _fails_at_once(client, "never_served")
        async with anyio.create_task_group() as tg:
            results: list[int] = []
            done = anyio.Event()

            async def call() -> None:
                results.append(await client.execute("add", 20, 22))
                done.set()

            tg.start_soon(call)
            await anyio.sleep(0.3)  # the call waits: nothing serves add yet
            assert results == []
            async with adder(f"tcp://127.0.0.1:{gateway.port}") as node:
                await node.wait_ready()
                with anyio.fail_after(5):
                    await done.wait()
        assert results == [42]


async def test_a_wait_for_a_function_served_before_ends_at_the_startup_grace(tmp_path: Path) -> None:
    state = tmp_path / "gateway.sqlite3"
    port = free_port()
    async with Gateway(port=port, host="127.0.0.1", transport="tcp", state_file=state):
        async with adder(f"tcp://127.0.0.1:{port}") as node:
            await node.wait_ready()
    async with Gateway(port=port, host="127.0.0.1", transport="tcp", state_file=state, startup_grace=0.5), \
            AsyncClient(f"tcp://127.0.0.1:{port}", timeout=20, **QUICK) as client:
        began = anyio.current_time()
        with pytest.raises(NoNodeAvailableError, match="came back in time"):
            await client.execute("add", 1, 2)
        assert 0.4 < anyio.current_time() - began < 3  # startup_grace, not the call's 20 s


async def test_a_client_remembers_what_it_was_served(tmp_path: Path) -> None:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    async with AsyncClient(address, timeout=15, **QUICK) as client:
        async with Gateway(port=port, host="127.0.0.1", transport="tcp"), adder(address) as node:
            await node.wait_ready()
            assert await client.execute("add", 1, 1) == 2
        # A fresh gateway with no state file; the node comes back later than the client.
        async with Gateway(port=port, host="127.0.0.1", transport="tcp", startup_grace=20) as gateway:
            async with AsyncClient(address, timeout=5, **QUICK) as newcomer:
                await _fails_at_once(newcomer, "add")  # it never was served add: nothing to wait for
            async with anyio.create_task_group() as tg:
                results: list[int] = []
                done = anyio.Event()

                async def call() -> None:
                    results.append(await client.execute("add", 2, 2))
                    done.set()

                tg.start_soon(call)
                await anyio.sleep(0.3)
                async with adder(f"tcp://127.0.0.1:{gateway.port}") as node:
                    await node.wait_ready()
                    with anyio.fail_after(5):
                        await done.wait()
            assert results == [4]


async def test_an_unreadable_state_file_is_set_aside(tmp_path: Path) -> None:
    state = tmp_path / "gateway.sqlite3"
    state.write_bytes(b"this is not an SQLite database" * 100)
    async with Gateway(port=0, host="127.0.0.1", transport="tcp", state_file=state) as gateway:
        async with adder(f"tcp://127.0.0.1:{gateway.port}") as node:
            await node.wait_ready()
    names = await anyio.to_thread.run_sync(os.listdir, tmp_path)
    assert [name for name in names if ".unreadable-" in name]  # kept for a person to look at
    with sqlite3.connect(state) as db:
        assert db.execute("SELECT node_id FROM nodes").fetchall() == [("adder",)]


class _Forgotten(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.event = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "forgotten" in record.getMessage():
            self.event.set()


@pytest.fixture
def forgotten() -> Iterator[anyio.Event]:
    """Set when the gateway logs that it forgot a node."""
    handler = _Forgotten()
    logger = logging.getLogger("easyremote.gateway")
    logger.addHandler(handler)
    try:
        yield handler.event
    finally:
        logger.removeHandler(handler)


async def test_a_long_cut_ends_with_the_calls_served(forgotten: anyio.Event) -> None:
    """Node and client cut off for longer than node_grace (the gateway forgets the node); the
    client comes back first; its calls wait for the node instead of failing."""
    async with Gateway(port=0, host="127.0.0.1", transport="tcp", heartbeat_timeout=1.0, node_grace=1.5,
                       startup_grace=20) as gateway, \
            ChaosProxy(gateway.port) as node_path, ChaosProxy(gateway.port) as client_path:
        node = adder(f"tcp://{node_path.address}", heartbeat_interval=0.3, heartbeat_timeout=1.0)
        async with node, AsyncClient(f"tcp://{client_path.address}", timeout=30, heartbeat_interval=0.3,
                                     heartbeat_timeout=1.0, reconnect_interval=0.2,
                                     max_reconnect_interval=0.5) as client:
            await node.wait_ready()
            assert await client.execute("add", 1, 2) == 3
            node_path.blackhole()
            client_path.blackhole()
            with anyio.fail_after(10):
                await forgotten.wait()  # after node_grace
            assert "adder" not in gateway.nodes()
            client_path.heal()
            async with anyio.create_task_group() as tg:
                results: list[int] = []

                async def call() -> None:
                    results.append(await client.execute("add", 5, 5))

                tg.start_soon(call)
                await anyio.sleep(1.5)  # the client is back, its call waits
                node_path.heal()
            assert results == [10]
