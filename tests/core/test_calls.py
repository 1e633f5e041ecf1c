"""Calls through a real gateway on every transport: kinds of functions, arguments, errors, routing."""

from __future__ import annotations

import pickle
import time

import anyio
import anyio.lowlevel
import pytest

from easyremote import ComputeNode
from easyremote.errors import (
    CallTimeoutError,
    MessageTooLargeError,
    NodeBusyError,
    NoNodeAvailableError,
    RemoteExecutionError,
    StreamingFunctionError,
)
from easyremote_core import hookimpl

from .conftest import client_for, running_node

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


class Unpicklable:
    def __reduce__(self):  # type: ignore[override]
        raise TypeError("this object refuses to be pickled")


class FailsToUnpickle:
    """Pickles fine on the client; the node cannot rebuild it."""

    def __reduce__(self):  # type: ignore[override]
        return (_explode, ())


def _explode() -> None:
    raise ValueError("cannot rebuild this argument")


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
            yield i

    @node.register(name="echo")
    def echo_bytes(data: bytes) -> bytes:
        return data

    @node.register
    def make(size: int) -> bytes:
        return b"x" * size

    @node.register
    def fail(message: str) -> None:
        raise KeyError(message)

    @node.register
    def unpicklable_result() -> object:
        return Unpicklable()

    @node.register
    def nap(seconds: float) -> str:
        time.sleep(seconds)
        return "rested"

    @node.register(timeout=0.3)
    async def slow(seconds: float) -> str:
        await anyio.sleep(seconds)
        return "done"

    @node.register
    def whoami() -> str:
        return node.node_id


async def test_every_kind_of_function(gateway) -> None:
    async with running_node(gateway, "n1", functions), client_for(gateway) as client:
        assert await client.execute("add", 1, 2) == 3
        assert await client.execute("add", a=1, b=5) == 6
        assert await client.execute("add", 7) == 7
        assert await client.execute("multiply", 6, b=7) == 42
        assert [x async for x in client.stream("count", 5)] == [0, 1, 2, 3, 4]
        assert [x async for x in client.stream("acount", 3)] == [0, 1, 2]
        assert [x async for x in client.stream("count", 0)] == []


async def test_execute_of_a_generator_function_names_stream_and_runs_nothing(gateway) -> None:
    started: list[int] = []

    def setup(node: ComputeNode) -> None:
        @node.register
        def numbers(n: int):
            started.append(n)
            yield from range(n)

    async with running_node(gateway, "n1", setup), client_for(gateway) as client:
        with pytest.raises(StreamingFunctionError, match=r"numbers is a generator function.*stream\('numbers'"):
            await client.execute("numbers", 3)
        assert started == []  # refused before it ran
        assert [x async for x in client.stream("numbers", 3)] == [0, 1, 2]


async def test_twenty_megabyte_argument_and_result(gateway) -> None:
    data = bytes(range(256)) * (20 * 1024 * 1024 // 256)
    async with running_node(gateway, "n1", functions), client_for(gateway) as client:
        assert await client.execute("echo", data) == data
        assert len(await client.execute("make", 20 * 1024 * 1024)) == 20 * 1024 * 1024


async def test_remote_exception_keeps_type_message_and_traceback(gateway) -> None:
    async with running_node(gateway, "n1", functions), client_for(gateway) as client:
        with pytest.raises(RemoteExecutionError) as caught:
            await client.execute("fail", "missing-key")
        assert caught.value.type_name == "KeyError"
        assert "missing-key" in caught.value.remote_message
        assert "raise KeyError(message)" in caught.value.remote_traceback
        assert caught.value.node_id == "n1"
        assert await client.execute("add", 1, 1) == 2  # the node goes on


async def test_unknown_function_fails_at_once(gateway) -> None:
    async with running_node(gateway, "n1", functions), client_for(gateway) as client:
        started = anyio.current_time()
        with pytest.raises(NoNodeAvailableError, match="no node serves 'nope'"):
            await client.execute("nope")
        assert anyio.current_time() - started < 1.0


async def test_execution_timeout_and_function_timeout_cancel_the_call(gateway) -> None:
    async with running_node(gateway, "n1", functions, execution_timeout=0.3) as node, client_for(gateway) as client:
        with pytest.raises(CallTimeoutError, match="nap did not finish within 0.3 s"):
            await client.execute("nap", 2)
        with pytest.raises(CallTimeoutError, match="slow did not finish within 0.3 s"):
            await client.execute("slow", 5)
        assert await client.execute("slow", 0.01) == "done"
        assert not node._active_executions


async def test_client_timeout_cancels_the_remote_call(gateway) -> None:
    started, cancelled = anyio.Event(), anyio.Event()

    def setup(node: ComputeNode) -> None:
        @node.register
        async def wait_forever() -> None:
            started.set()
            try:
                await anyio.sleep_forever()
            finally:
                cancelled.set()

    async with running_node(gateway, "n1", setup) as node, client_for(gateway) as client:
        with pytest.raises(CallTimeoutError, match="wait_forever did not answer within 0.5 s"):
            await client.execute("wait_forever", timeout=0.5)
        assert started.is_set()
        with anyio.fail_after(5):
            await cancelled.wait()  # the cancel travelled to the node
        assert not node._active_executions


async def test_full_queue_answers_node_busy(gateway) -> None:
    release = anyio.Event()
    running = 0
    both_running = anyio.Event()

    def setup(node: ComputeNode) -> None:
        @node.register
        async def hold() -> str:
            nonlocal running
            running += 1
            if running == 2:
                both_running.set()
            await release.wait()
            return "released"

        @node.register
        def add(a: int, b: int) -> int:
            return a + b

    async with running_node(gateway, "n1", setup, max_queue_size=2), client_for(gateway) as client:
        results: list[str] = []
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(lambda: _collect(results, client.execute("hold")))
            with anyio.fail_after(5):
                await both_running.wait()
            with pytest.raises(NodeBusyError, match="max_queue_size"):
                await client.execute("add", 1, 2)
            release.set()
        assert results == ["released", "released"]
        assert await client.execute("add", 1, 2) == 3


async def _collect(results: list, awaitable) -> None:
    results.append(await awaitable)


async def test_round_robin_and_pinning(gateway) -> None:
    gateway.routing = gateway.plugins.routing_policy("round-robin")
    async with running_node(gateway, "n1", functions), running_node(gateway, "n2", functions), \
            client_for(gateway) as client:
        seen = [await client.execute("whoami") for _ in range(6)]
        assert seen.count("n1") == 3 and seen.count("n2") == 3
        assert {await client.execute("whoami", node_id="n2") for _ in range(4)} == {"n2"}
        with pytest.raises(NoNodeAvailableError, match="'n9' is not connected"):
            await client.execute("whoami", node_id="n9")
        nodes = {info.node_id: info for info in await client.list_nodes()}
        assert set(nodes) == {"n1", "n2"} and "add" in nodes["n1"].functions
        assert nodes["n1"].state == "ready"


async def test_bad_input_gets_clear_errors_and_nothing_else_breaks(gateway) -> None:
    async with running_node(gateway, "n1", functions), client_for(gateway, max_message_size=1024 * 1024) as client:
        with pytest.raises(RemoteExecutionError) as caught:
            await client.execute("add", FailsToUnpickle(), 1)
        assert caught.value.type_name == "ValueError" and "cannot rebuild" in caught.value.remote_message
        with pytest.raises(RemoteExecutionError) as caught:
            await client.execute("unpicklable_result")
        assert "refuses to be pickled" in caught.value.remote_message
        with pytest.raises(TypeError, match="cannot be pickled"):
            await client.execute("add", Unpicklable())
        with pytest.raises(MessageTooLargeError, match="over max_message_size"):
            await client.execute("echo", b"x" * (2 * 1024 * 1024))
        assert await client.execute("add", 2, 2) == 4


async def test_oversized_result_is_reported_and_the_node_goes_on(gateway) -> None:
    async with running_node(gateway, "n1", functions, max_message_size=1024 * 1024), \
            client_for(gateway) as client:
        with pytest.raises(MessageTooLargeError, match="over max_message_size"):
            await client.execute("make", 2 * 1024 * 1024)
        assert await client.execute("add", 3, 4) == 7


class CallEvents:
    def __init__(self) -> None:
        self.started: list[tuple[str, str]] = []

    @hookimpl
    def easyremote_call_started(self, gateway_id: str, call_id: str, function: str, node_id: str) -> None:
        self.started.append((function, node_id))


def test_payloads_are_plain_pickle() -> None:
    from easyremote_core._protocol import dump_arguments, load_arguments

    assert load_arguments(dump_arguments((1,), {"b": 2})) == ((1,), {"b": 2})
    with pytest.raises(TypeError):
        load_arguments(pickle.dumps("not a pair"))


async def test_one_gateway_serves_nodes_and_clients_on_two_transports() -> None:
    from easyremote import AsyncClient, Gateway

    async with Gateway(port=0, host="127.0.0.1", transport="grpc", also_listen=["tcp://127.0.0.1:0"],
                       startup_grace=0) as gw:
        grpc_address, tcp_address = gw.addresses
        assert grpc_address.startswith("grpc://") and tcp_address.startswith("tcp://")
        on_grpc = ComputeNode(grpc_address, "on-grpc", heartbeat_interval=0.5, heartbeat_timeout=2)
        on_tcp = ComputeNode(tcp_address, "on-tcp", heartbeat_interval=0.5, heartbeat_timeout=2)
        on_grpc.register(lambda: "grpc node", name="where")
        on_tcp.register(lambda: "tcp node", name="where")
        async with on_grpc, on_tcp:
            await on_grpc.wait_ready()
            await on_tcp.wait_ready()
            for address in (grpc_address, tcp_address):
                async with AsyncClient(address, timeout=10) as client:
                    assert await client.execute("where", node_id="on-grpc") == "grpc node"
                    assert await client.execute("where", node_id="on-tcp") == "tcp node"


def test_also_listen_needs_a_transport_name() -> None:
    from easyremote import Gateway
    from easyremote.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="must name its transport"):
        Gateway(also_listen=["127.0.0.1:9000"])


async def test_a_stream_left_early_stops_on_the_node_and_the_client_goes_on(gateway) -> None:
    stopped = anyio.Event()

    def setup(node: ComputeNode) -> None:
        functions(node)

        @node.register
        async def forever():
            try:
                i = 0
                while True:
                    yield i
                    i += 1
                    await anyio.sleep(0.01)
            finally:
                stopped.set()

    async with running_node(gateway, "n1", setup), client_for(gateway) as client:
        async with client.stream("forever") as items:
            async for item in items:
                if item == 3:
                    break
        with anyio.fail_after(5):
            await stopped.wait()  # aclose() told the node to stop producing
        async for item in client.stream("count", 100):
            if item == 2:
                break  # left without aclose(): nothing breaks
        assert await client.execute("add", 1, 1) == 2
