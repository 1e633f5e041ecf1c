"""The transport contract suite: one set of tests every EasyRemote transport passes, on every backend it declares.

Run it against an installed transport::

    python -m pytest -p easyremote_core.testing.pytest_plugin --pyargs easyremote_core.testing.contract \\
        --easyremote-transport NAME
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ClassVar

import anyio
import pytest

from .._address import Address
from .._connection import ConnectionAttribute
from .._errors import ConnectionLostError, GatewayUnavailableError, MessageTooLargeError, ProtocolError
from .._plugins import get_plugin_manager
from .._transport import Connection, LinkOptions, Listener, Transport
from .events import StateRecorder
from .memory import MemoryListener, MemoryTransport
from .pytest_plugin import DEST, selected_names

__all__ = [
    "FaultInjector",
    "FaultInjectorFactory",
    "MemoryFaultInjector",
    "ProxyFaultInjector",
    "TestTransportContract",
    "default_fault_injector",
    "serving",
    "transport_backends",
]

LOOPBACK = "127.0.0.1"
TEST_TIMEOUT = 30.0  # the bound of every contract test
PROMPT = 5.0  # "at once": generous for a loaded machine, far below any heartbeat timeout
DROP_BOUND = 0.5  # drop() releases a dead link without waiting for anything
QUIET_WINDOW = 1.0  # how long a half-open link is watched for frames that must not arrive


# --- Faults --------------------------------------------------------------------------------


class FaultInjector(ABC):
    """Breaks the links between clients and one listener the way networks and processes fail.

    Clients dial :attr:`address` to go through the injector. A transport that a TCP
    proxy can stand in front of uses :class:`ProxyFaultInjector`; the memory transport
    uses :class:`MemoryFaultInjector`; any other brings its own by overriding the
    suite's ``fault_injector_factory`` fixture in a subclass.
    """

    address: Address

    @abstractmethod
    async def reset(self) -> None:
        """Break every open link at once, as the death of the peer's process would."""

    @abstractmethod
    def blackhole(self) -> None:
        """Drop every byte both ways on the open links while they stay open (a half-open link);
        new links connect (at the TCP level) but nothing they send arrives."""

    @abstractmethod
    def heal(self) -> None:
        """Let bytes flow again; links that were black-holed lost data and are broken."""


FaultInjectorFactory = Callable[[Transport, Listener], AbstractAsyncContextManager[FaultInjector]]


class ProxyFaultInjector(FaultInjector):
    """Faults cut into real sockets by a :class:`~easyremote_core.testing.chaos.ChaosProxy`."""

    def __init__(self, proxy: Any, scheme: str) -> None:
        self._proxy = proxy
        self.address = Address(LOOPBACK, proxy.port, scheme)

    @classmethod
    @asynccontextmanager
    async def around(cls, transport: Transport, listener: Listener) -> AsyncIterator[ProxyFaultInjector]:
        from .chaos import ChaosProxy

        async with ChaosProxy(listener.port, upstream_host=LOOPBACK, host=LOOPBACK, port=0) as proxy:
            yield cls(proxy, transport.name)

    async def reset(self) -> None:
        await self._proxy.reset()

    def blackhole(self) -> None:
        self._proxy.blackhole()

    def heal(self) -> None:
        self._proxy.heal()


class MemoryFaultInjector(FaultInjector):
    """Faults of the in-memory transport, through ``MemoryConnection.abort()`` and ``blackhole()``."""

    def __init__(self, listener: MemoryListener, scheme: str) -> None:
        self._listener = listener
        self.address = Address(LOOPBACK, listener.port, scheme)

    @classmethod
    @asynccontextmanager
    async def around(cls, transport: Transport, listener: Listener) -> AsyncIterator[MemoryFaultInjector]:
        assert isinstance(listener, MemoryListener)
        yield cls(listener, transport.name)

    async def reset(self) -> None:
        for connection in list(self._listener.connections):
            connection.abort()
        await anyio.lowlevel.checkpoint()

    def blackhole(self) -> None:
        self._listener.unresponsive = True
        for connection in self._listener.connections:
            connection.blackhole()

    def heal(self) -> None:
        self._listener.unresponsive = False
        for connection in list(self._listener.connections):
            if connection.blackholed:
                connection.abort()


def default_fault_injector(transport: Transport, listener: Listener) -> AbstractAsyncContextManager[FaultInjector]:
    """The memory transport's own faults for it; a loopback TCP proxy for every other transport."""
    if isinstance(transport, MemoryTransport):
        return MemoryFaultInjector.around(transport, listener)
    return ProxyFaultInjector.around(transport, listener)


# --- Helpers -------------------------------------------------------------------------------


def transport_backends(name: str) -> tuple[str, ...]:
    """The anyio backends a registered transport declares (``Transport.backends``; asyncio if absent)."""
    factory = get_plugin_manager().entries("transport")[name].factory
    source = factory if isinstance(factory, type) else factory()
    return tuple(getattr(source, "backends", None) or ("asyncio",))


def _selected_transports(config: pytest.Config, fixed: Sequence[str] | None) -> list[str]:
    return selected_names(config, "transport", DEST, fixed)


def _backend_available(backend: str) -> bool:
    return backend == "asyncio" or backend in sys.modules or _importable(backend)


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@asynccontextmanager
async def serving(
    transport: Transport, handler: Callable[[Connection], Awaitable[None]], options: LinkOptions, port: int = 0
) -> AsyncIterator[Listener]:
    """Listen on loopback and serve ``handler`` until the block ends; the listener is closed after."""
    listener = await transport.listen(LOOPBACK, port, options)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        try:
            yield listener
        finally:
            with anyio.fail_after(PROMPT):  # a listener whose aclose waits for its handlers fails here
                await listener.aclose()
            tg.cancel_scope.cancel()


async def echo(connection: Connection) -> None:
    """Send every frame back until the link ends."""
    try:
        while True:
            await connection.send(await connection.receive())
    except (anyio.EndOfStream, ConnectionLostError):
        pass


class Arrivals:
    """The listener's end of each link, handed over to the test; each is held open until ``release()``."""

    def __init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[Connection](math.inf)
        self._released = anyio.Event()

    async def handler(self, connection: Connection) -> None:
        await self._send.send(connection)
        await self._released.wait()

    async def next(self) -> Connection:
        return await self._receive.receive()

    def release(self) -> None:
        self._released.set()


def _bounded(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Give a contract test its time bound, whether or not pytest-timeout is installed."""

    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> None:
        with anyio.fail_after(TEST_TIMEOUT):
            await test(*args, **kwargs)

    return run


def _not_offered(attribute: str) -> None:
    """An optional ability the connection does not offer: the test has nothing to check."""
    warnings.warn(f"this transport's connections do not offer {attribute} (optional); not checked",
                  stacklevel=2)


def _open_fds() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    process = psutil.Process()
    return process.num_fds() if hasattr(process, "num_fds") else process.num_handles()  # type: ignore[attr-defined]


# --- The suite -----------------------------------------------------------------------------


@pytest.mark.anyio
class TestTransportContract:
    """What every transport guarantees, run once per (transport, backend) pair.

    Subclass it to run the suite from your own test module (``from easyremote_core.testing
    import contract`` then ``class TestMine(contract.TestTransportContract)``, so that the
    base class is not collected a second time): set ``transport_names`` to pin the
    transports, and override the ``fault_injector_factory`` fixture when a TCP proxy
    cannot stand between your transport's peers.
    """

    transport_names: ClassVar[Sequence[str] | None] = None  # None: --easyremote-transport, else all installed

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "transport_name" not in metafunc.fixturenames:
            return
        cases = []
        for name in _selected_transports(metafunc.config, type(self).transport_names):
            for backend in transport_backends(name):
                marks = () if _backend_available(backend) else (pytest.mark.skip(reason=f"{backend} is not installed"),)
                cases.append(pytest.param(name, backend, id=f"{name}-{backend}", marks=marks))
        metafunc.parametrize(("transport_name", "anyio_backend"), cases)

    @pytest.fixture
    async def transport(self, transport_name: str, anyio_backend: str) -> AsyncIterator[Transport]:
        transport = get_plugin_manager().transport(transport_name)
        try:
            yield transport
        finally:
            await transport.aclose()

    @pytest.fixture
    def options(self) -> LinkOptions:
        return LinkOptions(connect_timeout=PROMPT)

    @pytest.fixture
    def fault_injector_factory(self) -> FaultInjectorFactory:
        return default_fault_injector

    @staticmethod
    def address(transport: Transport, listener: Listener) -> Address:
        return Address(LOOPBACK, listener.port, transport.name)

    # -- exchange ---------------------------------------------------------------------------

    @_bounded
    async def test_connect_and_exchange(self, transport: Transport, options: LinkOptions) -> None:
        arrivals = Arrivals()
        async with serving(transport, arrivals.handler, options) as listener:
            async with await transport.connect(self.address(transport, listener), options) as client:
                server = await arrivals.next()
                assert isinstance(client.peer, str) and isinstance(server.peer, str)
                await client.send(b"ping")
                assert await server.receive() == b"ping"
                await server.send(b"pong")
                assert await client.receive() == b"pong"
                await client.send(b"")
                assert await server.receive() == b""
                arrivals.release()

    @_bounded
    async def test_a_link_dialled_before_serve_runs_is_served(self, transport: Transport, options: LinkOptions) -> None:
        """``listen()`` binds: a peer that dials before ``serve()`` starts waits, and is served."""
        listener = await transport.listen(LOOPBACK, 0, options)
        try:
            async with anyio.create_task_group() as tg:
                dialled: list[Connection] = []
                connected = anyio.Event()

                async def dial() -> None:
                    dialled.append(await transport.connect(self.address(transport, listener), options))
                    connected.set()

                tg.start_soon(dial)
                await anyio.sleep(0.2)  # the dial is under way; nothing serves yet
                tg.start_soon(listener.serve, echo)
                with anyio.fail_after(PROMPT):
                    await connected.wait()
                async with dialled[0] as client:
                    await client.send(b"early")
                    with anyio.fail_after(PROMPT):
                        assert await client.receive() == b"early"
                tg.cancel_scope.cancel()
        finally:
            with anyio.fail_after(PROMPT):
                await listener.aclose()

    @_bounded
    async def test_frames_arrive_in_order(self, transport: Transport, options: LinkOptions) -> None:
        async with serving(transport, echo, options) as listener:
            async with await transport.connect(self.address(transport, listener), options) as client:
                async with anyio.create_task_group() as tg:

                    async def send_all() -> None:
                        for i in range(1000):
                            await client.send(b"%d" % i)

                    tg.start_soon(send_all)
                    assert [await client.receive() for _ in range(1000)] == [b"%d" % i for i in range(1000)]

    @_bounded
    async def test_frames_up_to_the_limit(self, transport: Transport) -> None:
        limit = 8 * 1024 * 1024
        options = LinkOptions(max_message_size=limit, connect_timeout=PROMPT)
        largest = bytes(range(256)) * (limit // 256)
        async with serving(transport, echo, options) as listener:
            async with await transport.connect(self.address(transport, listener), options) as client:
                await client.send(largest)
                with anyio.fail_after(PROMPT):  # a transport that drops large frames would wait here
                    assert await client.receive() == largest
                with pytest.raises(MessageTooLargeError):
                    await client.send(largest + b"!")
                await client.send(b"still usable")
                assert await client.receive() == b"still usable"

    @_bounded
    async def test_frame_above_the_receivers_limit_is_never_delivered(self, transport: Transport) -> None:
        """The sender refuses it, or the receiver's ``receive`` raises ``MessageTooLargeError``."""
        arrivals = Arrivals()
        small = LinkOptions(max_message_size=64 * 1024, connect_timeout=PROMPT)
        large = LinkOptions(max_message_size=1024 * 1024, connect_timeout=PROMPT)
        async with serving(transport, arrivals.handler, small) as listener:
            async with await transport.connect(self.address(transport, listener), large) as client:
                server = await arrivals.next()
                try:
                    await client.send(b"x" * (512 * 1024))
                except MessageTooLargeError:
                    pass
                else:
                    with pytest.raises(MessageTooLargeError):
                        await server.receive()
                arrivals.release()

    @asynccontextmanager
    async def _delivering(
        self, transport: Transport, options: LinkOptions
    ) -> AsyncIterator[tuple[Connection, Connection, Callable[[Callable[[bytes], None]], None] | None]]:
        """A dialled link: (client, the listener's end, its ``deliver_frames`` or ``None``)."""
        arrivals = Arrivals()
        async with serving(transport, arrivals.handler, options) as listener:
            async with await transport.connect(self.address(transport, listener), options) as client:
                server = await arrivals.next()
                try:
                    yield client, server, server.extra(ConnectionAttribute.deliver_frames, None)
                finally:
                    arrivals.release()

    @_bounded
    async def test_delivered_frames_come_in_order_and_receive_reports_the_end(
        self, transport: Transport, options: LinkOptions
    ) -> None:
        """A connection offering ``deliver_frames`` hands it every frame, those already read
        first, in order; ``receive`` then only reports the end. For others it warns."""
        async with self._delivering(transport, options) as (client, server, deliver):
            if deliver is None:
                return _not_offered("deliver_frames")
            for i in range(5):
                await client.send(b"early %d" % i)
            with anyio.fail_after(PROMPT):
                assert await server.receive() == b"early 0"  # the rest are read, or on their way
            got: list[bytes] = []
            all_in = anyio.Event()

            def handler(frame: bytes) -> None:
                got.append(frame)
                if len(got) == 504:
                    all_in.set()

            deliver(handler)
            for i in range(500):
                await client.send(b"%d" % i)
            with anyio.fail_after(PROMPT):
                await all_in.wait()
            assert got == [b"early %d" % i for i in range(1, 5)] + [b"%d" % i for i in range(500)]
            await client.aclose()
            with anyio.fail_after(PROMPT), pytest.raises((anyio.EndOfStream, ConnectionLostError)):
                await server.receive()

    @_bounded
    async def test_a_delivery_handler_that_raises_ends_the_delivery_and_receive_raises_it(
        self, transport: Transport, options: LinkOptions
    ) -> None:
        async with self._delivering(transport, options) as (client, server, deliver):
            if deliver is None:
                return _not_offered("deliver_frames")
            got: list[bytes] = []

            def handler(frame: bytes) -> None:
                if frame == b"bad":
                    raise ProtocolError("a frame the handler refuses")
                got.append(frame)

            deliver(handler)
            for frame in (b"good", b"bad", b"after"):
                await client.send(frame)
            with anyio.fail_after(PROMPT), pytest.raises(ProtocolError, match="the handler refuses"):
                await server.receive()
            assert got == [b"good"]  # nothing after the failure is delivered

    @_bounded
    async def test_concurrent_sends_keep_frames_whole(self, transport: Transport, options: LinkOptions) -> None:
        arrivals = Arrivals()
        senders, each = 8, 40

        def frame(n: int, i: int) -> bytes:
            return bytes([n]) * (100 + 3001 * i) + b"/%d" % i

        async with serving(transport, arrivals.handler, options) as listener:
            async with await transport.connect(self.address(transport, listener), options) as client:
                server = await arrivals.next()
                async with anyio.create_task_group() as tg:

                    async def sender(n: int) -> None:
                        for i in range(each):
                            await client.send(frame(n, i))

                    for n in range(senders):
                        tg.start_soon(sender, n)
                    received = [await server.receive() for _ in range(senders * each)]
                arrivals.release()
        for n in range(senders):
            assert [f for f in received if f[0] == n] == [frame(n, i) for i in range(each)]

    # -- closing ----------------------------------------------------------------------------

    @_bounded
    async def test_orderly_close_is_end_of_stream(self, transport: Transport, options: LinkOptions) -> None:
        arrivals = Arrivals()
        async with serving(transport, arrivals.handler, options) as listener:
            client = await transport.connect(self.address(transport, listener), options)
            server = await arrivals.next()
            for i in range(3):
                await client.send(b"%d" % i)
            await client.aclose()
            await client.aclose()  # a second close does nothing
            assert [await server.receive() for _ in range(3)] == [b"0", b"1", b"2"]
            with pytest.raises(anyio.EndOfStream):
                await server.receive()
            with pytest.raises(ConnectionLostError):
                await client.send(b"after close")
            arrivals.release()

    @_bounded
    async def test_handler_return_closes_the_link_in_order(self, transport: Transport, options: LinkOptions) -> None:
        async def say_goodbye(connection: Connection) -> None:
            await connection.send(b"goodbye")

        async with serving(transport, say_goodbye, options) as listener:
            async with await transport.connect(self.address(transport, listener), options) as client:
                assert await client.receive() == b"goodbye"
                with pytest.raises(anyio.EndOfStream):
                    await client.receive()

    @_bounded
    async def test_closing_the_listener_is_connection_lost(self, transport: Transport, options: LinkOptions) -> None:
        arrivals = Arrivals()
        async with serving(transport, arrivals.handler, options) as listener:
            async with await transport.connect(self.address(transport, listener), options) as client:
                await arrivals.next()  # its handler runs until released, which never happens
                with anyio.fail_after(PROMPT):  # aclose resets the links; it does not wait for handlers
                    await listener.aclose()
                with anyio.fail_after(PROMPT), pytest.raises(ConnectionLostError):
                    await client.receive()

    @_bounded
    async def test_a_handler_that_raises_leaves_the_listener_serving(
        self, transport: Transport, options: LinkOptions
    ) -> None:
        calls = 0

        async def fails_once(connection: Connection) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug in the first link's handler")
            await echo(connection)

        async with serving(transport, fails_once, options) as listener:
            try:
                first = await transport.connect(self.address(transport, listener), options)
            except GatewayUnavailableError:
                pass  # the link ended before the dialling side saw it accepted: allowed
            else:
                async with first:
                    with anyio.fail_after(PROMPT), pytest.raises((anyio.EndOfStream, ConnectionLostError)):
                        await first.receive()  # the link of the failed handler ends
            async with await transport.connect(self.address(transport, listener), options) as second:
                await second.send(b"still serving")
                with anyio.fail_after(PROMPT):
                    assert await second.receive() == b"still serving"

    # -- faults -----------------------------------------------------------------------------

    @_bounded
    async def test_abrupt_peer_death_is_seen_at_once(
        self, transport: Transport, options: LinkOptions, fault_injector_factory: FaultInjectorFactory
    ) -> None:
        arrivals = Arrivals()
        async with serving(transport, arrivals.handler, options) as listener:
            async with fault_injector_factory(transport, listener) as faults:
                async with await transport.connect(faults.address, options) as client:
                    server = await arrivals.next()
                    await client.send(b"hello")
                    assert await server.receive() == b"hello"
                    await faults.reset()
                    with anyio.fail_after(PROMPT):
                        with pytest.raises(ConnectionLostError):
                            await client.receive()
                        with pytest.raises(ConnectionLostError):
                            await server.receive()
                    arrivals.release()

    @_bounded
    async def test_connect_gives_up_after_connect_timeout(
        self, transport: Transport, fault_injector_factory: FaultInjectorFactory
    ) -> None:
        """A gateway that accepts connections but never answers: connect fails within connect_timeout."""
        options = LinkOptions(connect_timeout=1.0)
        async with serving(transport, echo, options) as listener:
            async with fault_injector_factory(transport, listener) as faults:
                faults.blackhole()
                started = anyio.current_time()
                with anyio.fail_after(options.connect_timeout + PROMPT):
                    with pytest.raises(GatewayUnavailableError):
                        await transport.connect(faults.address, options)
                assert anyio.current_time() - started >= options.connect_timeout * 0.9, "it gave up too early"
                faults.heal()

    @staticmethod
    @asynccontextmanager
    async def half_open(transport: Transport, options: LinkOptions, fault_injector_factory: FaultInjectorFactory
                        ) -> AsyncIterator[tuple[Connection, Connection]]:
        """A link that worked (one frame crossed it), then black-holed: ``(client end, listener end)``."""
        arrivals = Arrivals()
        async with serving(transport, arrivals.handler, options) as listener:
            async with fault_injector_factory(transport, listener) as faults:
                client = await transport.connect(faults.address, options)
                server = await arrivals.next()
                await client.send(b"before")
                assert await server.receive() == b"before"
                faults.blackhole()
                try:
                    yield client, server
                finally:
                    faults.heal()
                    with anyio.move_on_after(PROMPT):  # a broken link may take long to close; do not wait for it
                        await client.aclose()
                    arrivals.release()

    @_bounded
    async def test_drop_releases_a_dead_link_at_once(
        self, transport: Transport, options: LinkOptions, fault_injector_factory: FaultInjectorFactory
    ) -> None:
        async with self.half_open(transport, options, fault_injector_factory) as (client, server):
            await client.send(b"never delivered")
            for end in (client, server):
                started = anyio.current_time()
                await end.drop()
                took = anyio.current_time() - started
                assert took < DROP_BOUND, f"drop() took {took:.2f} s on a dead link"

    @_bounded
    async def test_half_open_link_stays_open_and_silent(
        self, transport: Transport, options: LinkOptions, fault_injector_factory: FaultInjectorFactory
    ) -> None:
        """Only the heartbeat can find such a link dead; the transport must not invent frames or errors."""
        async with self.half_open(transport, options, fault_injector_factory) as (client, server):
            await client.send(b"lost")
            await server.send(b"lost too")
            with anyio.move_on_after(QUIET_WINDOW) as quiet:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client.receive)
                    tg.start_soon(server.receive)
            assert quiet.cancelled_caught, "a frame or an error crossed a black-holed link"

    # -- heartbeat detection ----------------------------------------------------------------

    @_bounded
    async def test_the_heartbeat_probe_finds_a_half_open_link(
        self, transport: Transport, fault_injector_factory: FaultInjectorFactory
    ) -> None:
        """A node on this transport declares a black-holed link dead within heartbeat_timeout (+10 %)."""
        from .._gateway import Gateway
        from .._node import ComputeNode

        timeout = 1.0
        async with Gateway(port=0, host="127.0.0.1", transport=transport, startup_grace=0) as gateway:
            assert gateway._listener is not None
            async with fault_injector_factory(transport, gateway._listener) as faults:
                node = ComputeNode(f"{transport.name}://{faults.address}", "contract-node", transport=transport,
                                   health_probes=["heartbeat"], heartbeat_interval=timeout / 5,
                                   heartbeat_timeout=timeout, reconnect_interval=30)
                states = StateRecorder()
                node.on_state_change(states)
                async with node:
                    await node.wait_ready()
                    link = node._supervisor.link if node._supervisor is not None else None
                    assert link is not None
                    faults.blackhole()
                    reason, detected = await states.wait_for("reconnecting")
                    assert reason == "Heartbeat timeout detected"
                    assert detected - link.last_received <= timeout * 1.1 + 0.05
                    faults.heal()

    # -- reconnecting -----------------------------------------------------------------------

    @_bounded
    async def test_reconnect_after_listener_restart_on_the_same_port(
        self, transport: Transport, options: LinkOptions
    ) -> None:
        async with serving(transport, echo, options) as listener:
            port = listener.port
            client = await transport.connect(self.address(transport, listener), options)
            await client.send(b"one")
            assert await client.receive() == b"one"
        with anyio.fail_after(PROMPT), pytest.raises(ConnectionLostError):
            await client.receive()
        await client.aclose()
        async with serving(transport, echo, options, port=port) as listener:
            assert listener.port == port
            async with await transport.connect(self.address(transport, listener), options) as client:
                await client.send(b"two")
                assert await client.receive() == b"two"

    @_bounded
    async def test_refused_is_gateway_unavailable(self, transport: Transport) -> None:
        options = LinkOptions(connect_timeout=TEST_TIMEOUT)  # refusal must not wait for the timeout
        async with serving(transport, echo, options) as listener:
            address = self.address(transport, listener)
        with anyio.fail_after(PROMPT):
            with pytest.raises(GatewayUnavailableError) as caught:
                await transport.connect(address, options)
        assert str(address.port) in str(caught.value), "the error names the address"

    @_bounded
    async def test_no_leaks_over_connect_close_cycles(self, transport: Transport, options: LinkOptions) -> None:
        async with serving(transport, echo, options) as listener:
            address = self.address(transport, listener)

            async def cycle() -> None:
                async with await transport.connect(address, options) as client:
                    await client.send(b"x")
                    assert await client.receive() == b"x"

            for _ in range(5):  # warm up what a transport keeps across links
                await cycle()
            await anyio.wait_all_tasks_blocked()
            tasks, fds = len(anyio.get_running_tasks()), _open_fds()
            for _ in range(50):
                await cycle()
            await anyio.wait_all_tasks_blocked()
            assert len(anyio.get_running_tasks()) - tasks <= 2, "tasks leaked over 50 links"
            if fds is not None:
                after = _open_fds()
                assert after is not None and after - fds <= 2, f"file descriptors leaked: {fds} -> {after}"

