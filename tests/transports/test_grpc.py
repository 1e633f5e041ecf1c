"""The grpc transport on real loopback ports (grpc.aio: asyncio only)."""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.lowlevel
import grpc
import grpc.aio
import pytest
import trustme
from easyremote_grpc import ClientConnection, GrpcChannelStateProbe, GrpcListener, GrpcTransport
from grpc_health.v1 import health_pb2, health_pb2_grpc

from easyremote_core import (
    Address,
    ConfigurationError,
    Connection,
    ConnectionAttribute,
    ConnectionLostError,
    GatewayUnavailableError,
    LinkDead,
    LinkHealth,
    LinkOptions,
    MessageTooLargeError,
    TLSConfig,
    get_plugin_manager,
)
from easyremote_core.testing.memory import MemoryTransport

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

LOCAL = "127.0.0.1"
TIMEOUT = 20
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
async def _one_event_loop() -> AsyncIterator[None]:
    """Run the whole module on one event loop, as a process does: gRPC core may complete
    an operation of a finished link a moment later, and grpc.aio delivers it to the
    loop that started it, which a per-test loop would already have closed."""
    yield


@asynccontextmanager
async def serving(
    handler: Callable[[Connection], Awaitable[None]],
    transport: GrpcTransport | None = None,
    options: LinkOptions | None = None,
) -> AsyncIterator[GrpcListener]:
    transport = transport or GrpcTransport()
    listener = await transport.listen(LOCAL, 0, options or LinkOptions())
    assert isinstance(listener, GrpcListener)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        try:
            yield listener
        finally:
            await listener.aclose()
            tg.cancel_scope.cancel()


async def dial(port: int, transport: GrpcTransport | None = None, **options: object) -> Connection:
    return await (transport or GrpcTransport()).connect(Address(LOCAL, port), LinkOptions(**options))  # type: ignore[arg-type]


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


async def test_both_ends_name_their_peer_readably() -> None:
    peers: list[str] = []

    async def handler(connection: Connection) -> None:
        peers.append(connection.peer)
        await echo(connection)

    async with serving(handler) as listener, await dial(listener.port) as connection:
        assert connection.peer == f"{LOCAL}:{listener.port}"
        with anyio.fail_after(TIMEOUT):
            await connection.send(b"x")
            await connection.receive()
    assert peers and peers[0].startswith(f"{LOCAL}:")


async def test_large_frame_both_ways() -> None:
    frame = os.urandom(20 * MiB)
    async with serving(echo) as listener, await dial(listener.port) as connection:
        with anyio.fail_after(TIMEOUT):
            await connection.send(frame)
            assert await connection.receive() == frame


async def test_a_lone_frame_is_handed_to_grpc_before_the_sender_yields_and_writes_need_no_task() -> None:
    # send_nowait starts the gRPC write of a frame that comes alone (a sequential call's) itself:
    # no writer task, no loop turn first. Frames that come in a burst (queued behind a write)
    # wait for the loop's next turn and go out together, in order, until a frame comes alone again.
    async with serving(echo) as listener, await dial(listener.port) as connection:
        assert isinstance(connection, ClientConnection)
        with anyio.fail_after(TIMEOUT):
            await connection.send(b"warm-up")  # the stream's metadata is sent
            assert await connection.receive() == b"warm-up"
            tasks = asyncio.all_tasks()

            def lone(frame: bytes) -> None:
                connection.send_nowait(frame)
                assert connection._writing and connection.buffered_bytes() == 0  # handed to gRPC at once

            for index in range(3):
                lone(b"lone %d" % index)
                assert await connection.receive() == b"lone %d" % index
            lone(b"burst 0")
            for index in range(1, 6):
                connection.send_nowait(b"burst %d" % index)  # behind the write in flight
            for index in range(6):
                assert await connection.receive() == b"burst %d" % index
            connection.send_nowait(b"after")  # still taken for a burst: written at the next turn
            assert not connection._writing
            assert await connection.receive() == b"after"
            lone(b"alone again")
            assert await connection.receive() == b"alone again"
            assert asyncio.all_tasks() == tasks  # no task was made for any of it


async def test_with_frames_unanswered_a_lone_frame_waits_for_the_loop_s_next_turn() -> None:
    # Frames sent less frames received: a link with more than one call in flight (32 callers,
    # say) writes each frame with the others of its turn, so that messages of one frame each
    # never become the rule; a link with one call at a time writes a lone frame at once.
    arrived: list[bytes] = []
    third = anyio.Event()

    async def sink(connection: Connection) -> None:  # takes frames, answers none
        try:
            while True:
                arrived.append(await connection.receive())
                if len(arrived) == 3:
                    third.set()
        except anyio.EndOfStream:
            pass

    async with serving(sink) as listener, await dial(listener.port) as connection:
        assert isinstance(connection, ClientConnection)
        with anyio.fail_after(TIMEOUT):
            for frame in (b"first", b"second"):  # at most one unanswered before each
                connection.send_nowait(frame)
                assert connection._writing  # written at once
                await connection._writes_ended()
            connection.send_nowait(b"third")  # two unanswered before it
            assert not connection._writing and connection.buffered_bytes() == len(b"third")
            await third.wait()  # written at the next turn
            assert arrived == [b"first", b"second", b"third"]


async def test_both_ends_hand_frames_to_a_handler_as_they_are_read() -> None:
    # deliver_frames: the reader calls the link's handler with each frame it reads, so no task
    # waiting in receive() is woken per frame (a loop turn less per frame at every hop).
    got: list[bytes] = []
    all_in = anyio.Event()

    def handler(frame: bytes) -> None:
        got.append(frame)
        if len(got) == 3:
            all_in.set()

    async def delivering(connection: Connection) -> None:
        connection.extra(ConnectionAttribute.deliver_frames)(handler)
        with pytest.raises(anyio.EndOfStream):
            await connection.receive()  # only the end is received

    async with serving(delivering) as listener, await dial(listener.port) as connection:
        assert connection.extra(ConnectionAttribute.deliver_frames, None) is not None
        with anyio.fail_after(TIMEOUT):
            for frame in (b"a", b"b", b"c"):
                await connection.send(frame)
            await all_in.wait()
    assert got == [b"a", b"b", b"c"]


async def test_oversized_frame_is_refused_before_sending() -> None:
    options = LinkOptions(max_message_size=1024)
    async with serving(echo, options=options) as listener:
        connection = await GrpcTransport().connect(Address(LOCAL, listener.port), options)
        async with connection:
            with pytest.raises(MessageTooLargeError):
                await connection.send(b"x" * 1025)
            with anyio.fail_after(TIMEOUT):  # the link is still fine
                await connection.send(b"x" * 1024)
                assert await connection.receive() == b"x" * 1024


async def test_a_frame_over_the_servers_limit_is_refused_by_the_sender() -> None:
    """Each end announces its max_message_size; the sender refuses what its peer would refuse."""
    async with serving(echo, options=LinkOptions(max_message_size=1024)) as listener:
        with anyio.fail_after(TIMEOUT):
            async with await dial(listener.port, max_message_size=4 * MiB) as connection:
                with pytest.raises(MessageTooLargeError, match=r"the peer's max_message_size \(1024\)"):
                    await connection.send(b"x" * (1 * MiB))
                await connection.send(b"still fine")  # the link goes on
                assert await connection.receive() == b"still fine"


async def test_a_frame_over_the_clients_limit_is_refused_by_the_gateway_side() -> None:
    refused: list[BaseException] = []

    async def handler(connection: Connection) -> None:
        await connection.receive()
        try:
            await connection.send(b"y" * (1 * MiB))  # larger than the client accepts
        except MessageTooLargeError as exc:
            refused.append(exc)
        await connection.send(b"small")

    async with serving(handler, options=LinkOptions(max_message_size=4 * MiB)) as listener:
        with anyio.fail_after(TIMEOUT):
            async with await dial(listener.port, max_message_size=1024) as connection:
                await connection.send(b"go")
                assert await connection.receive() == b"small"
    assert refused and "the peer's max_message_size (1024)" in str(refused[0])


async def test_a_peer_that_ignores_the_limit_loses_only_its_own_link() -> None:
    """A dialler that announces nothing and sends too much: gRPC ends that RPC; the server goes on."""
    async with serving(echo, options=LinkOptions(max_message_size=1024)) as listener:
        with anyio.fail_after(TIMEOUT):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{listener.port}") as channel:
                call = channel.stream_stream("/easyremote.v1.Gateway/Link")()
                await call.write(b"x" * (1 * MiB))
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call.read()
                assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            async with await dial(listener.port) as connection:  # the server still serves
                await connection.send(b"again")
                assert await connection.receive() == b"again"


async def test_client_close_is_an_orderly_close_for_the_server() -> None:
    outcome: list[str] = []
    done = anyio.Event()

    async def handler(connection: Connection) -> None:
        try:
            while True:
                await connection.send(await connection.receive())
        except anyio.EndOfStream:
            outcome.append("end")
        except ConnectionLostError as exc:
            outcome.append(f"lost: {exc}")
        finally:
            done.set()

    async with serving(handler) as listener:
        with anyio.fail_after(TIMEOUT):
            connection = await dial(listener.port)
            await connection.send(b"x")
            assert await connection.receive() == b"x"
            await connection.aclose()
            await connection.aclose()  # idempotent
            await done.wait()
            with pytest.raises(ConnectionLostError):
                await connection.send(b"after close")
            with pytest.raises(ConnectionLostError):
                await connection.receive()
    assert outcome == ["end"]


async def test_receive_cancelled_by_a_timeout_keeps_the_link() -> None:
    async with serving(echo) as listener, await dial(listener.port) as connection:
        with anyio.move_on_after(0.05):
            await connection.receive()  # nothing comes; the timeout must not end the link
        with anyio.fail_after(TIMEOUT):
            await connection.send(b"still here")
            assert await connection.receive() == b"still here"


async def test_closed_listener_is_seen_as_a_lost_link_at_once() -> None:
    async with serving(echo) as listener:
        connection = await dial(listener.port)
        async with connection:
            with anyio.fail_after(TIMEOUT):
                await connection.send(b"x")
                await connection.receive()
            started = anyio.current_time()
            await listener.aclose()
            with anyio.fail_after(5), pytest.raises(ConnectionLostError):
                await connection.receive()
            assert anyio.current_time() - started < 1.0
            with pytest.raises(ConnectionLostError):
                await connection.send(b"y")


_KILLABLE_GATEWAY = textwrap.dedent(
    """
    import anyio
    from easyremote_core import LinkOptions
    from easyremote_grpc import GrpcTransport

    async def echo(connection):
        while True:
            await connection.send(await connection.receive())

    async def main():
        listener = await GrpcTransport().listen("127.0.0.1", 0, LinkOptions())
        print(listener.port, flush=True)
        await listener.serve(echo)

    anyio.run(main)
    """
)


async def test_killed_gateway_process_is_seen_as_a_lost_link_at_once() -> None:
    process = await anyio.open_process([sys.executable, "-c", _KILLABLE_GATEWAY], stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        with anyio.fail_after(TIMEOUT):
            port = int((await process.stdout.receive()).decode().split()[0])
            connection = await dial(port)
        async with connection:
            with anyio.fail_after(TIMEOUT):
                await connection.send(b"x")
                assert await connection.receive() == b"x"
            started = anyio.current_time()
            process.send_signal(signal.SIGKILL)
            with anyio.fail_after(5), pytest.raises(ConnectionLostError):
                await connection.receive()
            assert anyio.current_time() - started < 1.0
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_port_taken_raises_oserror() -> None:
    async with serving(echo) as listener:
        with pytest.raises(OSError) as caught:
            await GrpcTransport().listen(LOCAL, listener.port, LinkOptions())
    assert caught.value.errno == errno.EADDRINUSE
    assert f"port {listener.port} on {LOCAL} is already in use" in str(caught.value)


async def test_health_service_answers_serving() -> None:
    async with serving(echo) as listener:
        async with grpc.aio.insecure_channel(f"{LOCAL}:{listener.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "easyremote.v1.Gateway"):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_turns_not_serving_while_shutting_down() -> None:
    async with serving(echo, transport=GrpcTransport(shutdown_grace=5.0)) as listener:
        async with grpc.aio.insecure_channel(f"{LOCAL}:{listener.port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            with anyio.fail_after(TIMEOUT):
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
                async with anyio.create_task_group() as tg:
                    tg.start_soon(listener.aclose)
                    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
                    watch.cancel()


def _link(connection: Connection, interval: float = 30.0) -> LinkHealth:
    return LinkHealth(connection=connection, heartbeat_interval=5.0, heartbeat_timeout=15.0,
                      health_check_interval=interval)


async def test_channel_state_probe_declares_the_link_dead_when_the_server_stops() -> None:
    async with serving(echo) as listener:
        connection = await dial(listener.port)
        async with connection:
            assert isinstance(connection, ClientConnection)
            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(listener.aclose)
                    with pytest.raises(LinkDead, match="gRPC channel state"):
                        await GrpcChannelStateProbe().watch(_link(connection))


async def test_channel_state_probe_watches_nothing_on_other_links() -> None:
    finished = False

    async def watch(connection: Connection) -> None:
        nonlocal finished
        await GrpcChannelStateProbe().watch(_link(connection))
        finished = True

    transport = MemoryTransport()
    listener = await transport.listen(LOCAL, 0, LinkOptions())
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        connection = await transport.connect(Address(LOCAL, listener.port), LinkOptions())
        with anyio.move_on_after(0.2):
            await watch(connection)
        await connection.aclose()
        await listener.aclose()
        tg.cancel_scope.cancel()
    assert not finished


async def test_keepalive_also_sets_tcp_user_timeout() -> None:
    tcp_user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
    if tcp_user_timeout is None or not sys.platform.startswith("linux"):
        pytest.skip("TCP_USER_TIMEOUT is a Linux socket option")
    async with serving(echo) as listener, await dial(listener.port) as connection:
        with anyio.fail_after(TIMEOUT):
            await connection.send(b"x")
            await connection.receive()
        values = []
        for name in os.listdir("/proc/self/fd"):
            try:
                sock = socket.socket(fileno=os.dup(int(name)))
            except OSError:
                continue
            with sock:
                if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                    continue
                try:
                    ends = {sock.getsockname()[1], sock.getpeername()[1]}
                except OSError:
                    continue  # the listening socket has no peer
                if listener.port in ends:
                    values.append(sock.getsockopt(socket.IPPROTO_TCP, tcp_user_timeout))
        assert len(values) == 2  # the client's and the server's end
        assert values == [3000, 3000]


@pytest.mark.timeout(30)
async def test_the_gateway_never_answers_pings_with_too_many_pings() -> None:
    """A node pinging far more often than the gateway's 5 s minimum, on an idle link, is not
    sent away: the server counts no ping strikes (grpc.http2.max_ping_strikes = 0)."""
    eager = GrpcTransport(channel_options={"grpc.keepalive_time_ms": 200, "grpc.keepalive_timeout_ms": 1000})
    async with serving(echo) as listener, await dial(listener.port, transport=eager) as connection:
        with anyio.fail_after(TIMEOUT):
            await connection.send(b"before")
            assert await connection.receive() == b"before"
        await anyio.sleep(3.0)  # idle: about 15 keepalive pings; gRPC's default would GOAWAY after 2 strikes
        with anyio.fail_after(TIMEOUT):
            await connection.send(b"after")
            assert await connection.receive() == b"after"


async def test_tls_link(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost", LOCAL)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    server_cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    server_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    server_tls = TLSConfig(cert=str(tmp_path / "cert.pem"), key=str(tmp_path / "key.pem"))
    async with serving(echo, transport=GrpcTransport(tls=server_tls)) as listener:
        client = GrpcTransport(tls=TLSConfig(ca=str(tmp_path / "ca.pem")))
        with anyio.fail_after(TIMEOUT):
            async with await dial(listener.port, client) as connection:
                await connection.send(b"secret")
                assert await connection.receive() == b"secret"
            with pytest.raises(GatewayUnavailableError):  # a client that trusts another CA
                await dial(listener.port, GrpcTransport(tls=TLSConfig(ca=str(tmp_path / "other-ca.pem"))))


def test_plugin_manager_resolves_grpc() -> None:
    manager = get_plugin_manager()
    transport = manager.transport("grpc")
    assert isinstance(transport, GrpcTransport)
    assert [type(p) for p in transport.default_probes()] == [GrpcChannelStateProbe]
    assert isinstance(manager.health_probe("grpc-channel-state"), GrpcChannelStateProbe)


# Prints what GRPC_EXPERIMENTS said when grpc was imported, and what it says once easyremote_grpc is.
_GRPC_IMPORT_WATCH = """
import importlib.abc, json, os, sys

class Watch(importlib.abc.MetaPathFinder):
    seen = []

    def find_spec(self, name, path=None, target=None):
        if name == "grpc":
            Watch.seen.append(os.environ.get("GRPC_EXPERIMENTS"))
        return None

sys.meta_path.insert(0, Watch())
if sys.argv[1] == "grpc-first":
    import grpc
import easyremote_grpc
print(json.dumps({"seen": Watch.seen, "after": os.environ.get("GRPC_EXPERIMENTS")}))
"""


async def _import_watched(order: str, experiments: str | None) -> dict[str, object]:
    env = {key: value for key, value in os.environ.items() if key != "GRPC_EXPERIMENTS"}
    if experiments is not None:
        env["GRPC_EXPERIMENTS"] = experiments
    with anyio.fail_after(TIMEOUT):
        done = await anyio.run_process([sys.executable, "-c", _GRPC_IMPORT_WATCH, order], env=env)
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the iomgr endpoints are chosen on Linux only")
async def test_grpc_core_is_imported_with_iomgr_endpoints_unless_the_user_chose() -> None:
    from easyremote_grpc._preload import EXPERIMENTS

    # gRPC core reads the variable once, at its import; child processes do not inherit it
    assert await _import_watched("transport-first", None) == {"seen": [EXPERIMENTS], "after": None}
    # the user's own choice, even an empty one, is what gRPC core sees
    assert await _import_watched("transport-first", "") == {"seen": [""], "after": ""}
    # grpc imported before the transport: its core has read its settings, nothing is touched
    assert await _import_watched("grpc-first", None) == {"seen": [None], "after": None}


async def test_trio_is_refused_with_a_clear_message() -> None:
    """Runs under trio, on its own loop in a worker thread (this module's loop is asyncio's)."""

    async def under_trio() -> None:
        with pytest.raises(ConfigurationError, match="asyncio only.*tcp"):
            await GrpcTransport().connect(Address(LOCAL, 1), LinkOptions())
        with pytest.raises(ConfigurationError, match="asyncio only"):
            await GrpcTransport().listen(LOCAL, 0, LinkOptions())

    await anyio.to_thread.run_sync(functools.partial(anyio.run, under_trio, backend="trio"))


async def test_a_link_s_tasks_live_and_end_with_it() -> None:
    """Each end's reader and writer run inside the link's own task group (a host task on the
    dialling end, the listener's task on the accepting end): a caller cancelled in the middle
    of a receive leaves the link working, and once both ends are closed no task is left."""
    import asyncio

    def link_tasks() -> list[str]:
        return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("easyremote-grpc")]

    assert link_tasks() == []
    async with serving(echo) as listener:
        connections = [await dial(listener.port) for _ in range(5)]
        for connection in connections:
            with anyio.move_on_after(0.01):
                await connection.receive()  # nothing comes: the caller's scope cuts the read short
            await connection.send(b"still here")
            with anyio.fail_after(TIMEOUT):
                assert await connection.receive() == b"still here"
        readers = [name for name in link_tasks() if name.startswith("easyremote-grpc-reader")]
        assert len(readers) == 10  # one per end of each link
        for connection in connections:
            with anyio.fail_after(TIMEOUT):
                await connection.aclose()
    assert link_tasks() == []  # serving() returns once the listener's tasks have ended


async def test_closing_a_link_ends_the_channel_state_watches_it_left_pending() -> None:
    """A probe's wait cut short by its timer must not leave watches in gRPC core, and closing
    the link must end the one it keeps, or it completes after its event loop closed ("Event
    loop is closed")."""
    async with serving(echo) as listener:
        connection = await dial(listener.port)
        assert isinstance(connection, ClientConnection)
        for _ in range(3):  # READY stays READY: each wait is cut short
            with anyio.move_on_after(0.05):
                await connection.channel_state.wait_for_state_change(connection.channel.get_state())
        assert connection.channel_state.pending == 1  # the one watch the link keeps, not one per wait
        with anyio.fail_after(TIMEOUT):
            await connection.aclose()
        assert connection.channel_state.pending == 0
        assert connection.channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN


# Event loops come and go in one process: sessions one after another, a gateway and a
# node serving in threads of their own, blocking clients created and closed. grpc.aio binds
# every loop to one poller; a gRPC operation that outlives its loop used to be reported
# on another loop as "Exception in callback PollerCompletionQueue._handle_events ...
# RuntimeError: Event loop is closed".
_LOOPS_COME_AND_GO = textwrap.dedent(
    """
    import sys, threading
    import anyio
    from easyremote import AsyncClient, Client, ComputeNode, Gateway
    from easyremote_core.testing.processes import free_port

    TRANSPORT = sys.argv[1]

    def make_node(address, node_id):
        node = ComputeNode(address, node_id, heartbeat_interval=0.5, heartbeat_timeout=2.0,
                           reconnect_interval=0.2)

        @node.register
        def add(a, b):
            return a + b

        return node

    def serve_in_thread(node):  # once registered; the event is set when it loses the gateway
        ready, reconnecting = threading.Event(), threading.Event()

        def record(old, new, reason):
            if str(new) == "ready":
                ready.set()
            elif str(new) == "reconnecting" and ready.is_set():
                reconnecting.set()

        node.on_state_change(record)
        thread = threading.Thread(target=node.serve)
        thread.start()
        assert ready.wait(10)
        return thread, reconnecting

    async def session(i):
        async with Gateway(port=0, host="127.0.0.1", transport=TRANSPORT, startup_grace=0) as gw:
            address = f"{TRANSPORT}://127.0.0.1:{gw.port}"
            async with make_node(address, f"session-{i}") as node:
                with anyio.fail_after(10):
                    await node.wait_ready()
                async with AsyncClient(address, timeout=10) as client:
                    return await client.execute("add", i, 100)

    print("sessions", [anyio.run(session, i) for i in range(3)], flush=True)

    class GatewayThread:
        def __init__(self):
            port = free_port()
            self.gateway = Gateway(port=port, host="127.0.0.1", transport=TRANSPORT, startup_grace=0)
            self.thread = threading.Thread(target=self.gateway.serve)
            self.thread.start()
            self.address = f"{TRANSPORT}://127.0.0.1:{port}"

        def stop(self):
            self.gateway.close(10)  # returns once serve() has returned
            self.thread.join(10)
            assert not self.thread.is_alive()

    gateway = GatewayThread()
    node = make_node(gateway.address, "threaded")
    node_thread, _ = serve_in_thread(node)
    results = []
    for i in range(4):
        with Client(gateway.address, timeout=10) as client:
            results.append(client.execute("add", i, 10))

    async def one_async_client(i):
        async with AsyncClient(gateway.address, timeout=10) as client:
            return await client.execute("add", i, 20)

    results += [anyio.run(one_async_client, i) for i in range(2)]
    print("threads", results, flush=True)
    node.stop()  # the node's loop ends first
    node_thread.join(10)
    assert not node_thread.is_alive()
    gateway.stop()

    gateway = GatewayThread()
    node = make_node(gateway.address, "outlives")
    node_thread, reconnecting = serve_in_thread(node)
    gateway.stop()  # the gateway's loop ends first
    assert reconnecting.wait(10)
    node.stop()
    node_thread.join(10)
    assert not node_thread.is_alive()
    print("done", flush=True)
    """
)

_NOISE = ("Traceback", "Event loop is closed", "Exception in callback", "Task was destroyed",
          "was never awaited", "Exception ignored")


@pytest.mark.parametrize("transport_name", ["grpc", "tcp"])
async def test_event_loops_coming_and_going_print_no_noise(transport_name: str) -> None:
    with anyio.fail_after(60):
        result = await anyio.run_process([sys.executable, "-c", _LOOPS_COME_AND_GO, transport_name],
                                         check=False)
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, stderr
    assert stdout.splitlines() == ["sessions [100, 101, 102]", "threads [10, 11, 12, 13, 20, 21]", "done"]
    noise = [line for line in stderr.splitlines() if any(word in line for word in _NOISE)]
    assert not noise, stderr


async def test_a_listener_stopped_while_its_server_starts_closes_cleanly() -> None:
    """grpc.aio's server start, cancelled half-way, left its serving task failing with
    InvalidStateError, which server.stop() raised (a gateway stopped just after it started)."""
    listener = await GrpcTransport().listen(LOCAL, 0, LinkOptions())
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, echo)
            await anyio.lowlevel.checkpoint()  # serve() is now inside the server's start
            tg.cancel_scope.cancel()
        await listener.aclose()
