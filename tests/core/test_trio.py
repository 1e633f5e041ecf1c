"""The core is transport-neutral: a gateway, a node and a client run under trio as under asyncio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from easyremote import AsyncClient, ComputeNode, Gateway
from easyremote.errors import RemoteExecutionError
from easyremote_core import PluginManager, hookimpl
from easyremote_core.testing.events import StateRecorder

from .conftest import address, client_for, running_node

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

# gRPC is asyncio-only (grpc.aio); the two transports that declare trio are run here.
NEUTRAL_TRANSPORTS = ["memory", "tcp"]


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Overrides the asyncio-only fixture of ``tests/core/conftest.py``: every test runs on both."""
    return request.param


@pytest.fixture(params=NEUTRAL_TRANSPORTS)
def transport_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def gateway(transport_name: str) -> AsyncIterator[Gateway]:
    async with Gateway(port=0, host="127.0.0.1", transport=transport_name, heartbeat_timeout=3.0,
                       startup_grace=0) as gw:
        yield gw


def functions(node: ComputeNode) -> None:
    @node.register
    def add(a: int, b: int = 0) -> int:
        return a + b

    @node.register
    async def multiply(a: int, b: int) -> int:
        await anyio.lowlevel.checkpoint()
        return a * b

    @node.register
    def count(n: int):
        yield from range(n)

    @node.register
    async def acount(n: int):
        for i in range(n):
            await anyio.lowlevel.checkpoint()
            yield i

    @node.register
    def fail(message: str) -> None:
        raise KeyError(message)

    @node.register
    def which_loop() -> str:
        import sniffio

        try:
            return sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            return "worker thread"

    @node.register
    async def which_async_loop() -> str:
        import sniffio

        return sniffio.current_async_library()


async def test_every_kind_of_call(gateway: Gateway, anyio_backend: str) -> None:
    async with running_node(gateway, "n1", functions), client_for(gateway) as client:
        assert await client.execute("add", 1, 2) == 3
        assert await client.execute("add", a=4, b=5) == 9
        assert await client.execute("multiply", 6, b=7) == 42
        assert [x async for x in client.stream("count", 5)] == [0, 1, 2, 3, 4]
        assert [x async for x in client.stream("acount", 3)] == [0, 1, 2]
        assert [x async for x in client.stream("count", 0)] == []
        # Sync functions run in a worker thread, async ones on the node's own event loop.
        assert await client.execute("which_loop") == "worker thread"
        assert await client.execute("which_async_loop") == anyio_backend


async def test_remote_exception(gateway: Gateway) -> None:
    async with running_node(gateway, "n1", functions), client_for(gateway) as client:
        with pytest.raises(RemoteExecutionError) as caught:
            await client.execute("fail", "missing-key")
        assert caught.value.type_name == "KeyError"
        assert "missing-key" in caught.value.remote_message
        assert "raise KeyError(message)" in caught.value.remote_traceback
        assert caught.value.node_id == "n1"
        assert await client.execute("add", 1, 1) == 2  # the node goes on


class Registrations:
    """Counts the gateway's ``easyremote_node_registered`` events; ``wait_for(n)`` waits for the n-th."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = anyio.Event()

    @hookimpl
    def easyremote_node_registered(self, gateway_id: str, node_id: str, functions: list[str]) -> None:
        self.count += 1
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, count: int) -> None:
        while self.count < count:
            await self._changed.wait()


class GatewayRun:
    """One ``async with Gateway(...)`` held open in its own task, so that it can end while
    the node and client opened after it stay up (task groups close innermost first)."""

    def __init__(self, make: Callable[[int], Gateway]) -> None:
        self._make = make
        self._stop = anyio.Event()
        self._stopped = anyio.Event()

    async def run(self, port: int, *, task_status: anyio.abc.TaskStatus[Gateway]) -> None:
        try:
            async with self._make(port) as gw:
                task_status.started(gw)
                await self._stop.wait()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        self._stop.set()
        await self._stopped.wait()


async def test_node_reconnects_after_the_gateway_restarts_in_process(transport_name: str) -> None:
    manager = PluginManager()
    manager.load_entry_points()
    registrations = Registrations()
    manager.register(registrations)
    states = StateRecorder()

    def gateway(port: int) -> Gateway:
        return Gateway(port=port, host="127.0.0.1", transport=transport_name, startup_grace=5.0,
                       plugins=manager)

    async with anyio.create_task_group() as gateways:
        first_run = GatewayRun(gateway)
        first: Gateway = await gateways.start(first_run.run, 0)
        port = first.port
        node = ComputeNode(address(first), "n1", reconnect_interval=0.2, heartbeat_interval=0.3,
                           heartbeat_timeout=1.5)
        functions(node)
        node.on_state_change(states)
        async with node, AsyncClient(address(first), timeout=10.0, reconnect_interval=0.2) as client:
            with anyio.fail_after(10):
                await node.wait_ready()
            assert await client.execute("add", 1, 2) == 3
            assert node.status().reconnect_count == 0
            before = len(states.seen)
            with anyio.fail_after(10):
                await first_run.stop()
                await states.wait_for("reconnecting", after=before)
            assert not node.status().connection_healthy

            second_run = GatewayRun(gateway)
            second: Gateway = await gateways.start(second_run.run, port)
            assert second.port == port
            with anyio.fail_after(15):
                await registrations.wait_for(2)
                await states.wait_for("ready", after=before)
                # The client reconnects by itself too; the call waits for it.
                assert await client.execute("add", 2, 3) == 5
                assert [x async for x in client.stream("acount", 2)] == [0, 1]
            status = node.status()
            assert status.state == "ready" and status.connection_healthy
            assert status.reconnect_count >= 1
            assert "n1" in second.nodes()
        await second_run.stop()
