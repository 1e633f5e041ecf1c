"""The chaos proxy against a plain anyio echo server, on asyncio and trio."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import AsyncIterator

import anyio
import psutil
import pytest
from anyio.abc import SocketAttribute, SocketStream

from easyremote_core.testing.chaos import ChaosProxy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

BACKENDS = ["asyncio", "trio"]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


class EchoServer:
    """Upstream: echoes every byte back and records what reached it."""

    def __init__(self) -> None:
        self.port = 0
        self.received = bytearray()
        self.connections = 0
        self.active = 0
        self._idle = anyio.Event()

    async def handle(self, stream: SocketStream) -> None:
        self.connections += 1
        self.active += 1
        try:
            async with stream:
                async for data in stream:
                    self.received += data
                    await stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self.active -= 1
            if not self.active:
                self._idle.set()
                self._idle = anyio.Event()

    async def wait_idle(self) -> None:
        with anyio.fail_after(5):
            while self.active:
                await self._idle.wait()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server.port = listener.extra(SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        yield server
        tg.cancel_scope.cancel()


async def receive_exactly(stream: SocketStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        data += await stream.receive()
    return bytes(data)


async def roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(payload)
        return await receive_exactly(stream, len(payload))


async def test_bytes_pass_through(echo: EchoServer) -> None:
    async with ChaosProxy(echo.port) as proxy:
        assert proxy.address == f"127.0.0.1:{proxy.port}"
        assert await roundtrip(proxy.port, b"hello") == b"hello"
        assert proxy.accepted_total == 1


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this host has no IPv6 loopback")
async def test_ipv6_loopback() -> None:
    async def echo_once(stream: SocketStream) -> None:
        async with stream:
            await stream.send(await stream.receive())

    listener = await anyio.create_tcp_listener(local_host="::1")
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo_once)
        async with ChaosProxy(listener.extra(SocketAttribute.local_port), "::1", host="::1") as proxy:
            assert proxy.address == f"[::1]:{proxy.port}"
            async with await anyio.connect_tcp("::1", proxy.port) as stream:
                await stream.send(b"six")
                assert await stream.receive() == b"six"
        tg.cancel_scope.cancel()


async def test_large_transfer_arrives_intact(echo: EchoServer) -> None:
    payload = os.urandom(5 * 1024 * 1024)
    async with ChaosProxy(echo.port) as proxy, await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.send, payload)
            with anyio.fail_after(30):
                echoed = await receive_exactly(stream, len(payload))
    assert echoed == payload


async def test_half_close_is_passed_on(echo: EchoServer) -> None:
    async with ChaosProxy(echo.port) as proxy, await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
        await stream.send(b"last words")
        await stream.send_eof()
        with anyio.fail_after(5):
            echoed = bytearray()
            async for data in stream:  # ends when the upstream's own EOF comes back through the proxy
                echoed += data
        assert echoed == b"last words"


async def test_reset_is_seen_at_once_and_the_proxy_keeps_accepting(echo: EchoServer) -> None:
    async with ChaosProxy(echo.port) as proxy, await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
        await stream.send(b"a")
        assert await stream.receive() == b"a"
        await proxy.reset()
        assert proxy.open_connections == 0
        with anyio.fail_after(2), pytest.raises(anyio.BrokenResourceError) as info:
            await stream.receive()
        assert isinstance(info.value.__cause__, ConnectionResetError)
        assert await roundtrip(proxy.port) == b"ping"


async def test_blackhole_is_half_open(echo: EchoServer) -> None:
    async with ChaosProxy(echo.port) as proxy, await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
        await stream.send(b"before")
        assert await receive_exactly(stream, 6) == b"before"
        proxy.blackhole()
        await stream.send(b"into the void")  # the socket is still open: sending works
        with anyio.move_on_after(1) as scope:
            await stream.receive()
        assert scope.cancelled_caught, "a black-holed link must not answer"
        assert proxy.open_connections == 1
        assert bytes(echo.received) == b"before"

        # A connection made while black-holed is accepted but never reaches upstream.
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as late:
            await proxy.wait_connections(2)
            await late.send(b"hello?")
            with anyio.move_on_after(0.5) as scope:
                await late.receive()
            assert scope.cancelled_caught
            assert echo.connections == 1

            proxy.heal()  # the black-holed links lost bytes, so they are reset
            for victim in (stream, late):
                with anyio.fail_after(2), pytest.raises(anyio.BrokenResourceError):
                    await victim.receive()
        assert await roundtrip(proxy.port) == b"ping"


async def test_latency_delays_each_direction_and_keeps_order(echo: EchoServer) -> None:
    async with ChaosProxy(echo.port) as proxy:
        proxy.set_latency(0.2)
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
            started = anyio.current_time()
            await stream.send(b"x")
            assert await stream.receive() == b"x"
            elapsed = anyio.current_time() - started
            assert 0.35 <= elapsed < 5, elapsed  # 0.2 s each way; generous upper bound

            for i in range(20):
                await stream.send(b"%03d" % i)
            assert await receive_exactly(stream, 60) == b"".join(b"%03d" % i for i in range(20))
        with pytest.raises(ValueError):
            proxy.set_latency(-1)


async def test_refuse_and_heal(echo: EchoServer) -> None:
    async with ChaosProxy(echo.port) as proxy, await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
        port = proxy.port
        proxy.refuse()
        assert proxy.is_refusing
        with pytest.raises(OSError):
            await anyio.connect_tcp("127.0.0.1", port)
        await stream.send(b"still here")  # open connections are untouched
        assert await receive_exactly(stream, 10) == b"still here"
        proxy.heal()
        assert proxy.port == port
        assert await roundtrip(port) == b"ping"


async def test_refused_connect_is_econnrefused(echo: EchoServer) -> None:
    async with ChaosProxy(echo.port) as proxy:
        proxy.refuse()
        with socket.socket() as raw:
            with pytest.raises(ConnectionRefusedError):
                raw.connect(("127.0.0.1", proxy.port))


async def test_upstream_down_resets_the_dialling_peer() -> None:
    with socket.socket() as placeholder:  # a port with nothing listening
        placeholder.bind(("127.0.0.1", 0))
        dead_port = placeholder.getsockname()[1]
    async with ChaosProxy(dead_port) as proxy, await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
        with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
            await stream.receive()


async def test_upstream_reset_is_passed_on(echo: EchoServer) -> None:
    async with ChaosProxy(echo.port) as inner, ChaosProxy(inner.port) as outer:
        async with await anyio.connect_tcp("127.0.0.1", outer.port) as stream:
            await stream.send(b"a")
            assert await stream.receive() == b"a"
            await inner.reset()  # outer's upstream leg is reset, so outer resets its dialling peer
            with anyio.fail_after(2), pytest.raises(anyio.BrokenResourceError):
                await stream.receive()


async def test_wait_connections_is_event_driven(echo: EchoServer) -> None:
    async with ChaosProxy(echo.port) as proxy:
        streams = []
        async with anyio.create_task_group() as tg:
            async def dial_later() -> None:
                await anyio.wait_all_tasks_blocked()
                for _ in range(3):
                    streams.append(await anyio.connect_tcp("127.0.0.1", proxy.port))

            tg.start_soon(dial_later)
            await proxy.wait_connections(3, timeout=5)
        assert proxy.open_connections == 3
        await proxy.wait_accepted(3, timeout=1)
        with pytest.raises(TimeoutError):
            await proxy.wait_connections(4, timeout=0.2)
        for stream in streams:
            await stream.aclose()


async def test_closing_the_proxy_closes_its_connections(echo: EchoServer) -> None:
    async with ChaosProxy(echo.port) as proxy:
        stream = await anyio.connect_tcp("127.0.0.1", proxy.port)
        await proxy.wait_connections(1)
        port = proxy.port
    async with stream:
        with anyio.fail_after(2), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await stream.receive()
    with socket.socket() as raw, pytest.raises(ConnectionRefusedError):
        raw.connect(("127.0.0.1", port))


async def test_no_sockets_or_tasks_leak(echo: EchoServer) -> None:
    me = psutil.Process()
    await roundtrip(echo.port)  # warm up lazily created resources
    await echo.wait_idle()
    fds_before = me.num_fds()
    tasks_before = len(anyio.get_running_tasks())
    for i in range(50):
        async with ChaosProxy(echo.port) as proxy:
            assert await roundtrip(proxy.port) == b"ping"
            stream = await anyio.connect_tcp("127.0.0.1", proxy.port)
            await proxy.wait_connections(1)
            if i % 3 == 0:
                await proxy.reset()
            elif i % 3 == 1:
                proxy.blackhole()
            await stream.aclose()
    await echo.wait_idle()
    assert len(anyio.get_running_tasks()) == tasks_before
    assert me.num_fds() <= fds_before


@pytest.mark.parametrize("backend", BACKENDS)
def test_thread_hosted_proxy_for_synchronous_code(backend: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = upstream.accept()
                except OSError:
                    return
                with conn:
                    try:
                        while data := conn.recv(65536):
                            conn.sendall(data)
                    except ConnectionResetError:  # the proxy resets its upstream leg too
                        pass

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        with ChaosProxy.in_thread(upstream.getsockname()[1], backend=backend) as proxy:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as conn:
                proxy.wait_connections(1)
                conn.sendall(b"sync")
                assert conn.recv(4) == b"sync"
                proxy.blackhole()
                conn.sendall(b"lost")
                conn.settimeout(0.5)
                with pytest.raises(socket.timeout):
                    conn.recv(4)
                proxy.heal()
                conn.settimeout(5)
                with pytest.raises(ConnectionResetError):
                    conn.recv(4)
            proxy.set_latency(0.05)
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as conn:
                conn.sendall(b"again")
                assert conn.recv(5) == b"again"
                proxy.reset()
                assert proxy.open_connections == 0
                with pytest.raises(ConnectionResetError):
                    conn.recv(5)
            proxy.refuse()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            assert proxy.accepted_total == 2
        stop.set()
        upstream.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        server.join(5)
        assert not server.is_alive()
