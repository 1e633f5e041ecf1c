"""Calls per second through an EasyRemote gateway, beside a raw gRPC unary round trip measured in the same run.

Run ``python benchmarks/bench_calls.py`` (``--quick`` for a short run, ``--transports grpc,tcp``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # keep gRPC core info logs out of the figures

import anyio
import anyio.to_thread
from anyio.streams.buffered import BufferedByteReceiveStream

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Budget, Stats, line, machine, measure, usable_cores

from easyremote import AsyncClient, ComputeNode, Gateway
from easyremote_core.testing.processes import GatewayProcess, PythonProcess

#: The original EasyRemote's measured rate, which the product claims to beat by hundreds of times.
ORIGINAL_RATE = 9.8
#: Targets from the performance issue.
MAX_RATIO = 2.5  # a sequential call costs at most this many raw gRPC unary round trips
MIN_CONCURRENT_RATE = 2_000.0  # calls/s with CONCURRENCY callers, on 2 cores
CONCURRENCY = 32
#: Raw baselines carry a payload about the size of an EasyRemote call envelope for ``echo(1)``.
RAW_PAYLOAD = b"x" * 96
STARTUP_TIMEOUT = 30.0

RAW_GRPC_SERVER = """
import asyncio, grpc

async def main():
    async def echo(request, context):
        return request

    async def pingpong(requests, context):  # the primitive an EasyRemote gRPC link is made of: one bidi stream
        while (message := await context.read()) is not grpc.aio.EOF:
            await context.write(message)

    server = grpc.aio.server()
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

RAW_TCP_SERVER = """
import struct, anyio
from anyio.abc import SocketAttribute
HEADER = struct.Struct(">I")

async def handle(stream):
    buffer = bytearray()
    async with stream:
        try:
            while True:
                buffer += await stream.receive()
                while len(buffer) >= 4:
                    end = 4 + HEADER.unpack_from(buffer)[0]
                    if len(buffer) < end:
                        break
                    frame = bytes(buffer[:end])
                    del buffer[:end]
                    await stream.send(frame)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass

async def main():
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    print(f"raw tcp echo listening on {listener.extra(SocketAttribute.local_port)}", flush=True)
    await listener.serve(handle)

anyio.run(main)
"""

NODE_SCRIPT = """
import logging, sys
from easyremote import ComputeNode

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
node = ComputeNode(sys.argv[1], "bench-node")

@node.register
def echo(x):
    return x

@node.register
async def aecho(x):
    return x

node.serve()
"""

REGISTERED = "Registered to VPS successfully"


class Report:
    """Collects results as they are printed, for the summary table at the end."""

    def __init__(self) -> None:
        self.results: dict[str, Stats] = {}

    def add(self, label: str, stats: Stats, note: str = "") -> Stats:
        self.results[label] = stats
        print(line(label, stats, note), flush=True)
        return stats


# -- processes ---------------------------------------------------------------------------


def _port_of(process: PythonProcess, text: str) -> int:
    return int(process.wait_for_line(text, STARTUP_TIMEOUT).rsplit(" ", 1)[1])


@asynccontextmanager
async def python_server(code: str, ready: str, name: str) -> AsyncIterator[int]:
    """Run a server script in its own process; yields the port it prints after ``ready``."""
    with PythonProcess(code, name=name) as process:
        process.start()
        yield await anyio.to_thread.run_sync(_port_of, process, ready)
        process.terminate()


@asynccontextmanager
async def gateway_and_node(transport: str) -> AsyncIterator[tuple[str, GatewayProcess, PythonProcess]]:
    """A gateway process and a node process registered with it; yields the address clients use."""
    with GatewayProcess(args=("--transport", transport)) as gateway:
        await anyio.to_thread.run_sync(gateway.start)
        address = f"{transport}://{gateway.address}"
        with PythonProcess(NODE_SCRIPT, args=(address,), name=f"node-{transport}") as node:
            node.start()
            await anyio.to_thread.run_sync(node.wait_for_line, REGISTERED, STARTUP_TIMEOUT)
            yield address, gateway, node
            node.terminate()
        gateway.terminate()


# -- baselines ---------------------------------------------------------------------------


async def raw_grpc(report: Report, budget: Budget) -> None:
    import grpc.aio  # only the baseline needs grpc here; EasyRemote loads it through its plugin

    async with python_server(RAW_GRPC_SERVER, "raw grpc echo listening on", "raw-grpc") as port:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary("/bench.Echo/Echo")

            async def call() -> object:
                return await echo(RAW_PAYLOAD)

            report.add("raw gRPC unary, sequential", await measure(call, budget))
            report.add(f"raw gRPC unary, {CONCURRENCY} concurrent", await measure(call, budget, workers=CONCURRENCY))

            stream = channel.stream_stream("/bench.Echo/PingPong")()

            async def ping() -> object:
                await stream.write(RAW_PAYLOAD)
                return await stream.read()

            report.add("raw gRPC bidi-stream ping-pong, sequential", await measure(ping, budget))
            await stream.done_writing()


async def raw_tcp(report: Report, budget: Budget) -> None:
    frame = struct.pack(">I", len(RAW_PAYLOAD)) + RAW_PAYLOAD
    async with python_server(RAW_TCP_SERVER, "raw tcp echo listening on", "raw-tcp") as port:
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            reader = BufferedByteReceiveStream(stream)

            async def call() -> object:
                await stream.send(frame)
                return await reader.receive_exactly(len(frame))

            report.add("raw TCP echo (anyio), sequential", await measure(call, budget))


# -- EasyRemote ----------------------------------------------------------------------------


def _caller(client: AsyncClient, function: str) -> Callable[[], object]:
    async def call() -> object:
        return await client.execute(function, 1)

    return call


async def easyremote_lines(report: Report, budget: Budget, prefix: str, client: AsyncClient) -> None:
    raw = report.results.get("raw gRPC unary, sequential")
    for function, kind in (("echo", "sync"), ("aecho", "async")):
        stats = await measure(_caller(client, function), budget)
        note = f"= {stats.mean_ms / raw.mean_ms:.1f}x raw gRPC round trip" if raw else ""
        report.add(f"{prefix}: {function} ({kind}), sequential", stats, note)
    for function, kind in (("echo", "sync"), ("aecho", "async")):
        report.add(f"{prefix}: {function} ({kind}), {CONCURRENCY} concurrent",
                   await measure(_caller(client, function), budget, workers=CONCURRENCY))


@asynccontextmanager
async def connected_client(address: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(address, timeout=30.0) as client:
        with anyio.fail_after(STARTUP_TIMEOUT):
            await client.wait_ready()
        yield client


async def separate_processes(report: Report, budget: Budget, transport: str, profile: Path | None) -> None:
    async with gateway_and_node(transport) as (address, gateway, node):
        async with connected_client(address) as client:
            await easyremote_lines(report, budget, f"{transport}, 3 processes", client)
            if profile is not None:
                await profile_calls(report, budget, transport, client, {"gateway": gateway.pid, "node": node.pid},
                                    profile)


async def one_process(report: Report, budget: Budget, transport: str) -> None:
    async with Gateway(port=0, host="127.0.0.1", transport=transport) as gateway:
        node = ComputeNode(f"{transport}://127.0.0.1:{gateway.port}", "bench-node-inline")

        @node.register
        def echo(x: object) -> object:
            return x

        @node.register
        async def aecho(x: object) -> object:
            return x

        async with node:
            with anyio.fail_after(STARTUP_TIMEOUT):
                await node.wait_ready()
            async with connected_client(f"{transport}://127.0.0.1:{gateway.port}") as client:
                await easyremote_lines(report, budget, f"{transport}, 1 process", client)


# -- profiling -----------------------------------------------------------------------------


async def profile_calls(report: Report, budget: Budget, transport: str, client: AsyncClient,
                        pids: dict[str, int], directory: Path) -> None:
    """Sample gateway, node and this client with py-spy while calls run, sequential then concurrent."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("profile: py-spy is not installed (pip install py-spy); skipped", flush=True)
        return
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any measurement
    seconds = max(2, round(budget.max_seconds))
    window = Budget(warmup_calls=0, warmup_seconds=0, max_calls=10**9, max_seconds=seconds + 1)
    for workers, mode in ((1, "sequential"), (CONCURRENCY, f"x{CONCURRENCY}")):
        samplers = []
        for role, pid in {**pids, "client": os.getpid()}.items():
            out = directory / f"{transport}-{mode}-{role}.txt"
            samplers.append(subprocess.Popen(  # noqa: ASYNC220 - starts a sampler, does not wait for it
                [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "500",
                 "--format", "raw", "--nonblocking", "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        await anyio.sleep(0.5)  # let the samplers attach
        stats = await measure(_caller(client, "echo"), window, workers=workers)
        for sampler in samplers:
            await anyio.to_thread.run_sync(sampler.wait, 30)
        report.add(f"{transport}, 3 processes: echo under py-spy, {mode}", stats, f"profiles in {directory}")


# -- summary -------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def summary(report: Report, transports: list[str]) -> None:
    results = report.results
    raw = results.get("raw gRPC unary, sequential")
    rows: list[tuple[str, str, str, str]] = []
    if raw is not None:
        rows.append(("raw gRPC unary round trip", f"{raw.mean_ms:.3f} ms/call ({raw.rate:,.0f} calls/s)",
                     "reference", ""))
    cores = usable_cores()
    for transport in transports:
        for function in ("echo", "aecho"):
            kind = "sync" if function == "echo" else "async"
            seq = results.get(f"{transport}, 3 processes: {function} ({kind}), sequential")
            if seq is not None and raw is not None:
                ratio = seq.mean_ms / raw.mean_ms
                rows.append((f"{transport}: sequential {function}",
                             f"{seq.mean_ms:.3f} ms/call = {ratio:.1f}x raw ({seq.rate:,.0f} calls/s, "
                             f"{seq.rate / ORIGINAL_RATE:,.0f}x original)",
                             f"<= {MAX_RATIO}x raw", verdict(ratio <= MAX_RATIO)))
            conc = results.get(f"{transport}, 3 processes: {function} ({kind}), {CONCURRENCY} concurrent")
            if conc is not None:
                rows.append((f"{transport}: {CONCURRENCY} concurrent {function}", f"{conc.rate:,.0f} calls/s",
                             f">= {MIN_CONCURRENT_RATE:,.0f} calls/s on 2 cores",
                             verdict(conc.rate >= MIN_CONCURRENT_RATE)
                             + ("" if cores == 2 else f" ({cores} cores here)")))
    widths = [max(len(row[i]) for row in rows + [("measurement", "figure", "target", "status")]) for i in range(4)]
    print(flush=True)
    print("Summary", flush=True)
    print(f"machine: {machine()}", flush=True)
    print(f"original EasyRemote: {ORIGINAL_RATE} calls/s; gateway, node and client each in its own process", flush=True)
    for row in [("measurement", "figure", "target", "status"), tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip(), flush=True)


# -- main ----------------------------------------------------------------------------------


async def run(options: argparse.Namespace) -> None:
    budget = Budget.named(options.budget)
    report = Report()
    print(f"EasyRemote call benchmark ({options.budget}): {machine()}", flush=True)
    await raw_grpc(report, budget)
    await raw_tcp(report, budget)
    for transport in options.transports:
        await separate_processes(report, budget, transport, options.profile)
        if not options.no_inline:
            await one_process(report, budget, transport)
    summary(report, options.transports)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 1 s per line, under a minute in all")
    parser.add_argument("--smoke", action="store_true",
                        help="a handful of calls per line: proves the benchmark runs, measures nothing")
    parser.add_argument("--transports", default="grpc,tcp", help="comma-separated transports (default grpc,tcp)")
    parser.add_argument("--no-inline", action="store_true", help="skip the one-process lines")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="also sample gateway, node and client with py-spy while calls run; write to DIR")
    options = parser.parse_args(argv)
    options.budget = "smoke" if options.smoke else "quick" if options.quick else "full"
    options.transports = [name.strip() for name in options.transports.split(",") if name.strip()]
    logging.basicConfig(level=logging.ERROR)  # the in-process gateway warns about running without a token
    started = time.perf_counter()
    anyio.run(run, options, backend="asyncio")
    print(f"\ntotal {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
