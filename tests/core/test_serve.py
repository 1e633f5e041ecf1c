"""Blocking serve() of gateways and nodes, in the main thread or any other, stopped from any thread."""

from __future__ import annotations

import errno
import gc
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.to_thread
import pytest
from easyremote_grpc import GrpcTransport
from easyremote_tcp import TcpTransport

from easyremote import AsyncClient, Client, ComputeNode, Gateway
from easyremote.errors import GatewayUnavailableError
from easyremote_core import Address, Connection, ConnectionHandler, LinkOptions, Listener, Transport
from easyremote_core.testing.processes import free_port

pytestmark = pytest.mark.timeout(60)

LOCAL = "127.0.0.1"


@pytest.fixture(scope="module", autouse=True)
def _one_event_loop_per_module() -> None:
    """Most tests here are synchronous: serve() runs event loops of its own, in threads."""


@pytest.fixture(params=["grpc", "tcp"])
def transport_name(request: pytest.FixtureRequest) -> str:
    return request.param


class Serving:
    """``target()`` in a thread of its own; ``outcome`` is what it returned or raised."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.outcome: BaseException | str | None = None
        self.thread = threading.Thread(target=self._run, args=(target,), name=name, daemon=True)
        self.thread.start()

    def _run(self, target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:
            self.outcome = exc
        else:
            self.outcome = "returned"

    def join(self, timeout: float = 10) -> BaseException | str | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.thread.name} is still running"
        return self.outcome


def make_node(address: str, node_id: str, **options: Any) -> ComputeNode:
    node = ComputeNode(address, node_id, heartbeat_interval=0.5, heartbeat_timeout=2.0,
                       reconnect_interval=0.2, **options)
    node.register(lambda a, b: a + b, name="add")
    return node


@contextmanager
def node_serving(address: str, node_id: str) -> Iterator[tuple[ComputeNode, Serving]]:
    node = make_node(address, node_id)
    ready = threading.Event()
    node.on_state_change(lambda old, new, reason: str(new) == "ready" and ready.set())
    serving = Serving(node.serve, f"node {node_id}")
    try:
        assert ready.wait(15), "the node never registered"
        yield node, serving
    finally:
        node.stop()


@pytest.mark.parametrize("how", ["close", "stop"])
def test_gateway_and_node_serve_in_threads_until_stopped_from_the_main_thread(transport_name: str,
                                                                               how: str) -> None:
    port = free_port()
    address = f"{transport_name}://{LOCAL}:{port}"
    gateway = Gateway(port=port, host=LOCAL, transport=transport_name, startup_grace=0)
    gateway_serving = Serving(gateway.serve, "gateway")
    with node_serving(address, "threaded") as (node, node_serving_):
        with Client(address, timeout=10) as client:
            assert client.execute("add", 1, 2) == 3
        node.stop()  # from the main thread: serve() in the node's thread returns
        assert node_serving_.join() == "returned"
    if how == "close":
        gateway.close(timeout=10)  # blocks until serve() has returned
        assert not gateway_serving.thread.is_alive()
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gateway.stop()  # not awaited: a request, and no "coroutine ... was never awaited"
            gc.collect()
        assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert gateway_serving.join() == "returned"
    gateway.close()  # a stopped gateway: nothing to do
    with socket.socket() as probe:  # nothing listens on the port any more
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((LOCAL, port))


def gated(transport: type[Transport]) -> Transport:
    """A real transport whose listen() waits until the test opens its gate."""

    class Gated(transport):  # type: ignore[misc, valid-type]
        listening, gate = threading.Event(), threading.Event()

        async def listen(self, host: str, port: int, options: LinkOptions) -> Listener:
            self.listening.set()
            await anyio.to_thread.run_sync(self.gate.wait, 10)
            return await super().listen(host, port, options)

    return Gated()


@pytest.mark.parametrize("transport", [GrpcTransport, TcpTransport])
def test_a_stop_asked_for_while_the_gateway_is_binding_ends_serve(transport: type[Transport]) -> None:
    gated_transport: Any = gated(transport)
    gateway = Gateway(port=0, host=LOCAL, transport=gated_transport)
    serving = Serving(gateway.serve, "gateway")
    assert gated_transport.listening.wait(10)
    gateway.stop()  # the loop's token is known, the listener not yet
    gated_transport.gate.set()
    assert serving.join() == "returned"


@pytest.mark.parametrize("where", ["main thread", "other thread"])
def test_a_taken_port_is_one_clear_oserror_from_serve(transport_name: str, where: str) -> None:
    with socket.socket() as taken:
        taken.bind((LOCAL, 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway = Gateway(port=port, host=LOCAL, transport=transport_name)
        if where == "main thread":
            with pytest.raises(OSError) as caught:
                gateway.serve()
            failure: Any = caught.value
        else:
            failure = Serving(gateway.serve, "gateway").join()
    assert type(failure) is OSError, repr(failure)
    assert failure.errno == errno.EADDRINUSE
    assert f"port {port} on {LOCAL} is already in use" in str(failure)


# -- failures come out as one exception ---------------------------------------------------
# A deliberately broken transport plugin (the real tcp transport, broken in one place):
# the only way to make a gateway or a node fail inside its own task groups.


class _BrokenListener(Listener):
    def __init__(self, inner: Listener) -> None:
        self._inner = inner
        self.port = inner.port

    async def serve(self, handler: ConnectionHandler) -> None:
        raise ValueError("the listener broke")

    async def aclose(self) -> None:
        await self._inner.aclose()


class BrokenListenerTransport(TcpTransport):
    async def listen(self, host: str, port: int, options: LinkOptions) -> Listener:
        return _BrokenListener(await super().listen(host, port, options))


class BrokenConnectTransport(TcpTransport):
    async def connect(self, address: Address, options: LinkOptions) -> Connection:
        raise ValueError("connect broke")


@pytest.mark.parametrize("where", ["main thread", "other thread"])
def test_a_gateway_failure_is_one_exception_from_serve(where: str) -> None:
    gateway = Gateway(port=0, host=LOCAL, transport=BrokenListenerTransport())
    if where == "main thread":
        with pytest.raises(ValueError, match="the listener broke"):
            gateway.serve()
    else:
        failure = Serving(gateway.serve, "gateway").join()
        assert type(failure) is ValueError and str(failure) == "the listener broke", repr(failure)


@pytest.mark.parametrize("where", ["main thread", "other thread"])
def test_a_node_failure_is_one_exception_from_serve(where: str) -> None:
    node = make_node(f"tcp://{LOCAL}:{free_port()}", "broken", transport=BrokenConnectTransport())
    if where == "main thread":
        with pytest.raises(ValueError, match="connect broke"):
            node.serve()
    else:
        failure = Serving(node.serve, "node").join()
        assert type(failure) is ValueError and str(failure) == "connect broke", repr(failure)


def test_a_node_that_gives_up_in_a_thread_raises_gateway_unavailable(transport_name: str) -> None:
    node = make_node(f"{transport_name}://{LOCAL}:{free_port()}", "gives-up", max_retry_attempts=1)
    failure = Serving(node.serve, "node").join(30)
    assert type(failure) is GatewayUnavailableError, repr(failure)


# -- embedding: async with, start()/stop() from other tasks and threads --------------------


@pytest.mark.anyio
async def test_close_from_another_thread_stops_an_embedded_gateway() -> None:
    async with Gateway(port=0, host=LOCAL, transport="tcp", startup_grace=0) as gateway:
        address = f"tcp://{LOCAL}:{gateway.port}"
        node = make_node(address, "embedded")
        async with node:
            with anyio.fail_after(10):
                await node.wait_ready()
            assert gateway.nodes() == {"embedded": "ready"}
            with anyio.fail_after(15):
                await anyio.to_thread.run_sync(gateway.close, 10)
            assert gateway.nodes() == {}
            with pytest.raises(OSError):  # nothing listens any more
                await anyio.connect_tcp(LOCAL, gateway.port)
    await gateway.stop()  # stopping a stopped gateway does nothing


@pytest.mark.anyio
async def test_start_and_stop_from_different_tasks() -> None:
    gateway = Gateway(port=0, host=LOCAL, transport="tcp", startup_grace=0)
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(gateway.start)
        async with AsyncClient(f"tcp://{LOCAL}:{gateway.port}", timeout=10) as client:
            assert await client.list_nodes() == []
        async with anyio.create_task_group() as tg:  # a task group opened after start()
            await gateway.stop()
            tg.cancel_scope.cancel()
        await gateway.start()
        with pytest.raises(RuntimeError, match="block the gateway's own event loop"):
            gateway.close()
        await gateway.stop()


@pytest.mark.anyio
async def test_stop_before_start_does_nothing() -> None:
    gateway = Gateway(port=0, host=LOCAL, transport="tcp")
    await gateway.stop()
    gateway.close()
    with anyio.fail_after(10):
        async with gateway:
            assert gateway.port != 0
