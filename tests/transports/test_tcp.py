"""The tcp transport on real loopback sockets, under asyncio and trio."""

from __future__ import annotations

import random
import socket
import struct
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import trustme
from easyremote_tcp import TcpTransport
from easyremote_tcp._loop import LoopConnection
from easyremote_tcp._transport import GREETING

from easyremote_core import (
    Address,
    Connection,
    ConnectionAttribute,
    ConnectionLostError,
    GatewayUnavailableError,
    LinkOptions,
    MessageTooLargeError,
    TLSConfig,
    get_plugin_manager,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

LOCAL = "127.0.0.1"
TIMEOUT = 20


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@asynccontextmanager
async def serving(
    handler: Callable[[Connection], Awaitable[None]],
    transport: TcpTransport | None = None,
    options: LinkOptions | None = None,
) -> AsyncIterator[tuple[TcpTransport, int]]:
    transport = transport or TcpTransport()
    listener = await transport.listen(LOCAL, 0, options or LinkOptions())
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        try:
            yield transport, listener.port
        finally:
            await listener.aclose()
            tg.cancel_scope.cancel()


async def echo(connection: Connection) -> None:
    try:
        while True:
            await connection.send(await connection.receive())
    except anyio.EndOfStream:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCAL, 0))
        return sock.getsockname()[1]


async def test_registered_as_tcp_plugin() -> None:
    assert isinstance(get_plugin_manager().transport("tcp"), TcpTransport)


async def test_the_dialling_end_names_the_gateway_by_url() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(echo) as (transport, port):
            async with await transport.connect(Address(LOCAL, port), LinkOptions()) as conn:
                assert conn.peer == f"tcp://{LOCAL}:{port}"


async def test_20_megabyte_frames() -> None:
    big = bytes(range(256)) * (20 * 1024 * 1024 // 256)
    with anyio.fail_after(TIMEOUT):
        async with serving(echo) as (transport, port):
            async with await transport.connect(Address(LOCAL, port), LinkOptions()) as conn:
                await conn.send(big)
                await conn.send(b"after")
                assert await conn.receive() == big
                assert await conn.receive() == b"after"


async def test_oversized_send_is_refused_before_sending() -> None:
    options = LinkOptions(max_message_size=1024)
    with anyio.fail_after(TIMEOUT):
        async with serving(echo, options=options) as (transport, port):
            async with await transport.connect(Address(LOCAL, port), options) as conn:
                with pytest.raises(MessageTooLargeError, match="1025 bytes"):
                    await conn.send(b"x" * 1025)
                await conn.send(b"x" * 1024)  # nothing of the refused frame went out
                assert await conn.receive() == b"x" * 1024


async def test_oversized_header_ends_the_link() -> None:
    seen: list[BaseException] = []
    done = anyio.Event()

    async def handler(connection: Connection) -> None:
        try:
            await connection.receive()
        except MessageTooLargeError as exc:
            seen.append(exc)
        finally:
            done.set()

    with anyio.fail_after(TIMEOUT):
        async with serving(handler, options=LinkOptions(max_message_size=1024)) as (_, port):
            async with await anyio.connect_tcp(LOCAL, port) as raw:
                await raw.send(GREETING)
                assert await raw.receive(len(GREETING)) == GREETING
                await raw.send(struct.pack(">I", 0xFFFF_FFF0))  # claims ~4 GiB, never sends it
                await done.wait()
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await raw.receive()
    assert "4294967280 bytes" in str(seen[0])


async def test_end_of_file_inside_a_frame_is_connection_lost() -> None:
    async def half_frame(raw: anyio.abc.SocketStream) -> None:
        async with raw:
            await raw.send(GREETING)
            assert await raw.receive(len(GREETING)) == GREETING  # unread bytes would make the close a reset
            await raw.send(struct.pack(">I", 100) + b"0123456789")

    with anyio.fail_after(TIMEOUT):
        async with await anyio.create_tcp_listener(local_host=LOCAL, local_port=0) as server:
            port = server.extra(anyio.abc.SocketAttribute.local_port)
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve, half_frame)
                async with await TcpTransport().connect(Address(LOCAL, port), LinkOptions()) as conn:
                    with pytest.raises(ConnectionLostError, match="middle of a frame"):
                        await conn.receive()
                tg.cancel_scope.cancel()


async def test_refused_is_gateway_unavailable_at_once() -> None:
    port = free_port()
    with anyio.fail_after(2):
        with pytest.raises(GatewayUnavailableError, match=f"tcp://{LOCAL}:{port}: .*refused"):
            await TcpTransport().connect(Address(LOCAL, port), LinkOptions(connect_timeout=10))


async def test_a_port_that_is_not_easyremote_is_gateway_unavailable() -> None:
    async def http(raw: anyio.abc.SocketStream) -> None:
        async with raw:
            await raw.send(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    with anyio.fail_after(TIMEOUT):
        async with await anyio.create_tcp_listener(local_host=LOCAL, local_port=0) as server:
            port = server.extra(anyio.abc.SocketAttribute.local_port)
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve, http)
                with pytest.raises(GatewayUnavailableError, match="not an EasyRemote tcp endpoint"):
                    await TcpTransport().connect(Address(LOCAL, port), LinkOptions())
                tg.cancel_scope.cancel()


async def test_socket_options_are_set() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(echo) as (transport, port):
            async with await transport.connect(Address(LOCAL, port), LinkOptions()) as conn:
                sock = conn.extra(anyio.abc.SocketAttribute.raw_socket)
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
                if hasattr(socket, "TCP_KEEPIDLE"):
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 20
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
                if hasattr(socket, "TCP_USER_TIMEOUT"):
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 20000


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory: Path = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert(LOCAL, "localhost")
    client = ca.issue_cert("node-1.example")
    paths = {
        "ca": directory / "ca.pem",
        "server_cert": directory / "server.pem",
        "server_key": directory / "server.key",
        "client_cert": directory / "client.pem",
        "client_key": directory / "client.key",
    }
    ca.cert_pem.write_to_path(paths["ca"])
    server.private_key_pem.write_to_path(paths["server_key"])
    server.cert_chain_pems[0].write_to_path(paths["server_cert"])
    client.private_key_pem.write_to_path(paths["client_key"])
    client.cert_chain_pems[0].write_to_path(paths["client_cert"])
    return {name: str(path) for name, path in paths.items()}


async def test_tls_round_trip(pki: dict[str, str]) -> None:
    server_tls = TLSConfig(cert=pki["server_cert"], key=pki["server_key"])
    with anyio.fail_after(TIMEOUT):
        async with serving(echo, TcpTransport(tls=server_tls)) as (_, port):
            client = TcpTransport(tls=TLSConfig(ca=pki["ca"]))
            async with await client.connect(Address(LOCAL, port), LinkOptions()) as conn:
                big = b"s" * (3 * 1024 * 1024)
                await conn.send(big)
                assert await conn.receive() == big
            with pytest.raises(GatewayUnavailableError, match="TLS"):  # the system store does not know our CA
                await TcpTransport(tls=TLSConfig()).connect(Address(LOCAL, port), LinkOptions())
            with pytest.raises(GatewayUnavailableError):  # a plain client cannot speak to a TLS gateway
                await TcpTransport().connect(Address(LOCAL, port), LinkOptions(connect_timeout=5))


async def test_tls_required_client_certificate(pki: dict[str, str]) -> None:
    server_tls = TLSConfig(cert=pki["server_cert"], key=pki["server_key"], ca=pki["ca"], require_client_cert=True)
    with anyio.fail_after(TIMEOUT):
        async with serving(echo, TcpTransport(tls=server_tls)) as (_, port):
            with_cert = TLSConfig(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"])
            async with await TcpTransport(tls=with_cert).connect(Address(LOCAL, port), LinkOptions()) as conn:
                await conn.send(b"hello")
                assert await conn.receive() == b"hello"
            with pytest.raises(GatewayUnavailableError, match="TLS"):
                await TcpTransport(tls=TLSConfig(ca=pki["ca"])).connect(Address(LOCAL, port), LinkOptions())


async def test_options_tls_overrides_the_transport_default(pki: dict[str, str]) -> None:
    server_tls = TLSConfig(cert=pki["server_cert"], key=pki["server_key"])
    with anyio.fail_after(TIMEOUT):
        async with serving(echo, options=LinkOptions(tls=server_tls)) as (transport, port):
            options = LinkOptions(tls=TLSConfig(ca=pki["ca"], server_hostname="localhost"))
            async with await transport.connect(Address(LOCAL, port), options) as conn:
                await conn.send(b"ok")
                assert await conn.receive() == b"ok"


async def test_serve_cancelled_while_peers_connect_leaves_the_loop_clean(anyio_backend: str) -> None:
    # A gateway stopping while peers keep dialling: an accept cancelled in the loop turn its
    # socket became readable must not be completed afterwards (on asyncio that lost the
    # connection and raised InvalidStateError in the event loop, failing whatever ran there).
    loop_errors: list[object] = []
    if anyio_backend == "asyncio":
        import asyncio

        asyncio.get_running_loop().set_exception_handler(lambda _, context: loop_errors.append(context))
    stop = threading.Event()

    def dial(port: int) -> None:
        while not stop.is_set():
            try:
                socket.create_connection((LOCAL, port), timeout=0.2).close()
            except OSError:
                pass

    transport = TcpTransport()
    for round_ in range(120):
        listener = await transport.listen(LOCAL, 0, LinkOptions())
        dialler = threading.Thread(target=dial, args=(listener.port,))
        dialler.start()
        try:
            with anyio.fail_after(5):  # serve() ends at once when its caller's scope is cancelled
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(listener.serve, echo)
                        await anyio.sleep(random.random() * 0.01)
                        scope.cancel()
                await listener.aclose()
        finally:
            stop.set()
            dialler.join()
            stop.clear()
        assert loop_errors == [], f"round {round_}: {loop_errors}"


_OUT_OF_DESCRIPTORS = """
import os, resource, sys
import anyio
from easyremote_tcp import TcpTransport
from easyremote_core import LinkOptions

async def echo(connection):
    try:
        while True:
            await connection.send(await connection.receive())
    except anyio.EndOfStream:
        pass

async def main():
    listener = await TcpTransport().listen("127.0.0.1", 0, LinkOptions(handshake_timeout=60))
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 3, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print(listener.port, flush=True)
    await listener.serve(echo)

anyio.run(main)
"""


async def test_out_of_descriptors_the_listener_waits_and_goes_on() -> None:
    # A peer opening connections until the gateway has no descriptors left: the links already
    # open keep working, the listener says why it cannot accept and accepts again when some close.
    process = await anyio.open_process([sys.executable, "-c", _OUT_OF_DESCRIPTORS])
    try:
        assert process.stdout is not None and process.stderr is not None
        with anyio.fail_after(TIMEOUT):
            port = int((await process.stdout.receive()).decode().split()[0])
            transport = TcpTransport()
            async with await transport.connect(Address(LOCAL, port), LinkOptions()) as first:
                hogs = [socket.create_connection((LOCAL, port)) for _ in range(12)]
                said = b""
                while b"cannot accept tcp links" not in said:
                    said += await process.stderr.receive()
                await first.send(b"still here")
                assert await first.receive() == b"still here"
                assert process.returncode is None
                for hog in hogs:
                    hog.close()
                async with await transport.connect(Address(LOCAL, port), LinkOptions()) as later:
                    await later.send(b"accepted again")
                    assert await later.receive() == b"accepted again"
    finally:
        process.kill()
        await process.wait()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # a trio link's sends wait instead
async def test_frames_for_a_slow_reader_wait_uncopied_and_arrive_in_order(anyio_backend: str) -> None:
    # On asyncio the link writes to the event loop's transport itself: frames for a peer that
    # reads slowly wait in the link, counted by buffered_bytes (which the gateway's cut-off
    # reads), and the transport's own buffer stays near its high-water mark.
    may_read, all_read = anyio.Event(), anyio.Event()
    received: list[bytes] = []
    frames = [i.to_bytes(4, "big") * 2500 for i in range(3000)]  # 10 kB each, 30 MB in all

    async def slow(connection: Connection) -> None:
        await may_read.wait()
        while len(received) < len(frames):
            received.append(await connection.receive())
        all_read.set()

    with anyio.fail_after(TIMEOUT):
        async with serving(slow) as (transport, port):
            async with await transport.connect(Address(LOCAL, port), LinkOptions()) as conn:
                send_nowait = conn.extra(ConnectionAttribute.send_nowait)
                buffered = conn.extra(ConnectionAttribute.buffered_bytes)
                for frame in frames:
                    send_nowait(frame)
                # The next turn of the loop writes the queued frames out, as far as the
                # kernel's buffers take them; what is left waits.
                await anyio.lowlevel.checkpoint()
                assert buffered() > 5_000_000  # what the kernel did not take (it takes ~10 MB on loopback)
                assert conn._transport.get_write_buffer_size() < 1_000_000  # type: ignore[attr-defined]
                may_read.set()
                await all_read.wait()
                assert buffered() == 0
    assert received == frames


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_burst_of_frames_starts_leaving_before_the_turn_of_the_loop_ends(anyio_backend: str) -> None:
    # 40 frames queued at once (a gateway forwarding 40 calls it read together) go out in
    # parts of 16 as they are queued, so the peer starts on the first ones while this side
    # handles the rest; only the last part waits for the end of the loop's turn.
    frames = [bytes([i]) * 100 for i in range(40)]
    with anyio.fail_after(TIMEOUT):
        async with serving(echo) as (transport, port):
            async with await transport.connect(Address(LOCAL, port), LinkOptions()) as conn:
                send_nowait = conn.extra(ConnectionAttribute.send_nowait)
                buffered = conn.extra(ConnectionAttribute.buffered_bytes)
                for frame in frames:
                    send_nowait(frame)
                assert buffered() == 8 * 104  # 32 frames (with their 4-byte headers) already in the kernel
                assert [await conn.receive() for _ in frames] == frames
                assert buffered() == 0


async def test_a_receiver_that_falls_behind_pauses_the_peer_and_gets_everything() -> None:
    # Frames read and not taken stop the reading at a few megabytes (the sender waits, through
    # TCP); taking them starts it again, also when what is buffered is only part of a frame.
    frames = [i.to_bytes(4, "big") * 256 for i in range(8000)]  # 1 kB each, 8 MB in all
    frames.append(b"L" * (3 * 1024 * 1024))  # a large frame after them
    may_read = anyio.Event()
    received: list[bytes] = []

    async def late(connection: Connection) -> None:
        await may_read.wait()
        if isinstance(connection, LoopConnection):
            assert connection._read_paused  # it stopped reading, a few megabytes in
        while len(received) < len(frames):
            received.append(await connection.receive())
        await connection.send(b"done")

    with anyio.fail_after(TIMEOUT):
        async with serving(late) as (transport, port):
            async with await transport.connect(Address(LOCAL, port), LinkOptions()) as conn:
                async with anyio.create_task_group() as tg:
                    async def send_all() -> None:
                        for frame in frames:
                            await conn.send(frame)

                    tg.start_soon(send_all)
                    await anyio.sleep(0.5)  # the receiver is behind: the sender is held back
                    may_read.set()
                assert await conn.receive() == b"done"
    assert received == frames


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
async def test_links_on_uvloop(anyio_backend: object) -> None:
    # Many asyncio programs run on uvloop: its transports are not subclasses of asyncio's and
    # its create_connection has no happy eyeballs; the protocol link works there too.
    import asyncio

    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    with anyio.fail_after(TIMEOUT):
        async with serving(echo) as (transport, port):
            async with await transport.connect(Address(LOCAL, port), LinkOptions()) as conn:
                assert isinstance(conn, LoopConnection)
                for size in (10, 100_000, 3_000_000):
                    await conn.send(b"x" * size)
                    assert await conn.receive() == b"x" * size
