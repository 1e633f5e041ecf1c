"""EasyRemote calls beside raw grpc.aio and NATS request/reply, measured interleaved in one run.

Run ``python benchmarks/bench_calls.py`` (``bash scripts/dev.sh bench`` installs the bench extra
first: nats-server and nats-py). ``--quick`` is a short run, ``--smoke`` only proves it runs.

Every comparison is interleaved: each round measures every contender once (A B C A B C …),
and each figure is the median over the rounds with the spread (lowest–highest) beside it.
Gateway, node and the peers' servers run in processes of their own; this process is the client.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import anyio
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _peers
from _common import machine, usable_cores

from easyremote import AsyncClient
from easyremote_core._backend import run as run_loop

Call = Callable[[], Awaitable[object]]

#: Raw baselines carry a payload about the size of an EasyRemote call envelope for ``aecho(1)``.
SMALL = b"x" * 96
CALLERS = 32
KIB, MIB = 1024, 1024 * 1024


@dataclass(frozen=True)
class Budget:
    rounds: int
    seconds: float  # one measured window
    warmup: float
    payloads: tuple[int, ...]
    callers: tuple[int, ...]
    nodes: tuple[int, ...]
    idle_nodes: int


BUDGETS = {
    "smoke": Budget(rounds=2, seconds=0.15, warmup=0.05, payloads=(KIB, MIB), callers=(1, 8),
                    nodes=(1, 3), idle_nodes=5),
    "quick": Budget(rounds=3, seconds=0.6, warmup=0.2, payloads=(KIB, 100 * KIB, MIB, 10 * MIB),
                    callers=(1, 8, 32, 128, 512), nodes=(1, 10, 100), idle_nodes=100),
    "full": Budget(rounds=5, seconds=2.0, warmup=0.5, payloads=(KIB, 100 * KIB, MIB, 10 * MIB, 20 * MIB),
                   callers=(1, 8, 32, 128, 512), nodes=(1, 10, 100), idle_nodes=200),
}


# -- measuring ---------------------------------------------------------------------------


@dataclass
class Window:
    """One measured window: calls done, wall time, each call's latency, CPU seconds per process."""

    calls: int
    seconds: float
    latencies: list[float]
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        return 1000 * statistics.median(self.latencies) if self.latencies else float("nan")

    def cpu_us_per_call(self) -> float:
        return 1e6 * sum(self.cpu.values()) / self.calls if self.calls else float("nan")


@dataclass
class Contender:
    """Something that answers calls; ``caller()`` gives one worker its call (a stream of its own, say)."""

    name: str
    caller: Callable[[], Awaitable[Call]]
    pids: dict[str, int]  # processes whose CPU a call costs, besides this one


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    seconds = {}
    for role, pid in {**pids, "client": os.getpid()}.items():
        times = psutil.Process(pid).cpu_times()
        seconds[role] = times.user + times.system
    return seconds


async def window(contender: Contender, workers: int, seconds: float, warmup: float, *,
                 min_calls: int = 1) -> Window:
    calls = [await contender.caller() for _ in range(workers)]
    await _drive(calls, warmup, None, min_calls=0)
    latencies: list[float] = []
    before = _cpu_seconds(contender.pids)
    started = time.perf_counter()
    await _drive(calls, seconds, latencies, min_calls=min_calls)
    took = time.perf_counter() - started
    after = _cpu_seconds(contender.pids)
    return Window(len(latencies), took, latencies, {role: after[role] - before[role] for role in after})


async def _drive(calls: Sequence[Call], seconds: float, latencies: list[float] | None, *, min_calls: int) -> None:
    clock = time.perf_counter
    deadline = clock() + seconds
    done = 0

    async def worker(call: Call) -> None:
        nonlocal done
        while clock() < deadline or done < min_calls:
            begin = clock()
            await call()
            done += 1
            if latencies is not None:
                latencies.append(clock() - begin)

    with anyio.fail_after(seconds + 120):  # a stuck call must not hang the benchmark
        async with anyio.create_task_group() as tg:
            for call in calls:
                tg.start_soon(worker, call)


@dataclass
class Series:
    """The windows of one line, one per round."""

    windows: list[Window] = field(default_factory=list)

    def median(self, value: Callable[[Window], float]) -> float:
        return statistics.median(value(w) for w in self.windows)

    def spread(self, value: Callable[[Window], float]) -> tuple[float, float]:
        values = [value(w) for w in self.windows]
        return min(values), max(values)


def rate(w: Window) -> float:
    return w.rate


def p50(w: Window) -> float:
    return w.p50_ms


def cpu(w: Window) -> float:
    return w.cpu_us_per_call()


class Results:
    def __init__(self) -> None:
        self.series: dict[str, Series] = {}

    def add(self, key: str, w: Window) -> None:
        self.series.setdefault(key, Series()).windows.append(w)

    def get(self, key: str) -> Series | None:
        return self.series.get(key)


async def interleave(results: Results, keyed: Sequence[tuple[str, Contender, int]], budget: Budget, *,
                     seconds: float | None = None, min_calls: int = 1) -> None:
    """Measure each (key, contender, workers) once per round, rotating the order every round."""
    for index in range(budget.rounds):
        shift = index % len(keyed)
        for key, contender, workers in [*keyed[shift:], *keyed[:shift]]:
            results.add(key, await window(contender, workers, seconds or budget.seconds, budget.warmup,
                                          min_calls=min_calls))


def show(label: str, series: Series | None, value: Callable[[Window], float], unit: str, fmt: str = ",.0f") -> str:
    if series is None or not series.windows:
        return f"{label:<46} not measured"
    low, high = series.spread(value)
    return (f"{label:<46} {series.median(value):>10{fmt}} {unit:<9} "
            f"(spread {low:{fmt}}–{high:{fmt}}, {len(series.windows)} rounds)")


# -- contenders ----------------------------------------------------------------------------


def _shared(call: Call) -> Callable[[], Awaitable[Call]]:
    async def caller() -> Call:
        return call

    return caller


@asynccontextmanager
async def easyremote(transport: str, stack_pids: dict[str, int] | None = None) -> AsyncIterator[
        tuple[AsyncClient, dict[str, int], str]]:
    async with _peers.gateway(transport) as gateway:
        address = f"{transport}://{gateway.address}"
        async with _peers.nodes(address, 1, prefix=f"bench-{transport}") as node:
            async with AsyncClient(address, timeout=60.0, max_message_size=_peers.MAX_MESSAGE) as client:
                with anyio.fail_after(_peers.STARTUP_TIMEOUT):
                    await client.wait_ready()
                yield client, {"gateway": gateway.pid, "node": node.pid}, address


def easyremote_contender(name: str, client: AsyncClient, pids: dict[str, int], function: str,
                         argument: object = 1) -> Contender:
    async def call() -> object:
        return await client.execute(function, argument)

    return Contender(name, _shared(call), pids)


@asynccontextmanager
async def raw_grpc() -> AsyncIterator[tuple[Contender, Contender, Contender, Callable[[bytes], Contender]]]:
    """Raw grpc.aio unary, bidi ping-pong, and bidi ping-pong through a relay process."""
    import grpc.aio

    async with _peers.raw_grpc_server() as (port, pid), _peers.raw_grpc_relay(port) as (relay_port, relay_pid):
        limit = [("grpc.max_receive_message_length", _peers.MAX_MESSAGE),
                 ("grpc.max_send_message_length", _peers.MAX_MESSAGE)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=limit) as channel, \
                grpc.aio.insecure_channel(f"127.0.0.1:{relay_port}", options=limit) as relay_channel:
            unary = channel.unary_unary("/bench.Echo/Echo")
            streams: list[grpc.aio.StreamStreamCall] = []

            def unary_with(payload: bytes) -> Contender:
                async def call() -> object:
                    return await unary(payload)

                return Contender(f"raw gRPC unary {len(payload)} B", _shared(call), {"server": pid})

            def bidi_caller(on: grpc.aio.Channel) -> Callable[[], Awaitable[Call]]:
                async def caller() -> Call:
                    stream = on.stream_stream("/bench.Echo/PingPong")()
                    streams.append(stream)

                    async def call() -> object:
                        await stream.write(SMALL)
                        return await stream.read()

                    return call

                return caller

            try:
                yield (unary_with(SMALL), Contender("raw gRPC bidi", bidi_caller(channel), {"server": pid}),
                       Contender("raw gRPC relay", bidi_caller(relay_channel), {"relay": relay_pid, "server": pid}),
                       unary_with)
            finally:
                for stream in streams:
                    stream.cancel()


@asynccontextmanager
async def nats_peer() -> AsyncIterator[tuple[Callable[[bytes], Contender], str, int] | None]:
    if _peers.nats_missing() is not None:
        yield None
        return
    import nats

    async with _peers.nats_pair() as (server, responder):
        connection = await nats.connect(server.url, max_reconnect_attempts=0)
        try:
            def with_payload(payload: bytes) -> Contender:
                async def call() -> object:
                    return await connection.request("bench.echo", payload, timeout=60)

                return Contender(f"NATS request/reply {len(payload)} B", _shared(call),
                                 {"nats-server": server.pid, "responder": responder.pid})

            yield with_payload, server.url, server.pid
        finally:
            await connection.close()


# -- sections ------------------------------------------------------------------------------


HEADLINE = [  # key, label
    ("grpc-async", "EasyRemote grpc, async def"),
    ("grpc-sync", "EasyRemote grpc, def"),
    ("tcp-async", "EasyRemote tcp, async def"),
    ("tcp-sync", "EasyRemote tcp, def"),
    ("raw-unary", "raw gRPC unary"),
    ("raw-bidi", "raw gRPC bidi stream"),
    ("raw-relay", "raw gRPC bidi through a relay"),
    ("nats", "NATS request/reply"),
]


async def headline(results: Results, budget: Budget, contenders: dict[str, Contender]) -> None:
    print(f"\n## Calls: sequential and {CALLERS} concurrent callers, interleaved", flush=True)
    keyed = [(f"{key} seq", contenders[key], 1) for key, _ in HEADLINE if key in contenders]
    keyed += [(f"{key} x{CALLERS}", contenders[key], CALLERS) for key, _ in HEADLINE if key in contenders]
    await interleave(results, keyed, budget)
    for key, label in HEADLINE:
        if key not in contenders:
            print(f"{label:<46} not measured: {NATS_REASON}", flush=True)
            continue
        print(show(f"{label}, sequential p50", results.get(f"{key} seq"), p50, "ms", ".3f"), flush=True)
        print(show(f"{label}, {CALLERS} callers", results.get(f"{key} x{CALLERS}"), rate, "calls/s"), flush=True)
    print(f"\nCPU per call at {CALLERS} callers, every process together (and each)", flush=True)
    for key, label in HEADLINE:
        series = results.get(f"{key} x{CALLERS}")
        if series is None:
            continue
        roles = series.windows[0].cpu.keys()
        each = ", ".join(
            f"{role} {statistics.median(1e6 * w.cpu[role] / w.calls for w in series.windows):.0f}" for role in roles)
        print(show(f"{label}", series, cpu, "µs/call") + f"   [{each}]", flush=True)


async def payloads(results: Results, budget: Budget, contenders: dict[str, Callable[[bytes], Contender]]) -> None:
    print("\n## Payloads: one caller, echoing bytes of each size, interleaved", flush=True)
    for size in budget.payloads:
        payload = os.urandom(size)
        keyed = [(f"{name} {size}", make(payload), 1) for name, make in contenders.items()]
        await interleave(results, keyed, budget, seconds=budget.seconds, min_calls=2)
        for name in contenders:
            series = results.get(f"{name} {size}")
            print(show(f"{name}, {_size(size)}", series, lambda w, s=size: s * w.rate / MIB, "MB/s", ",.1f"),
                  flush=True)


async def callers(results: Results, budget: Budget, contenders: dict[str, Contender]) -> None:
    print("\n## Concurrent callers, interleaved", flush=True)
    for count in budget.callers:
        keyed = [(f"{name} callers {count}", contender, count) for name, contender in contenders.items()]
        await interleave(results, keyed, budget)
        for name in contenders:
            print(show(f"{name}, {count} callers", results.get(f"{name} callers {count}"), rate, "calls/s"),
                  flush=True)


async def node_counts(results: Results, budget: Budget, transports: Sequence[str]) -> None:
    print(f"\n## Nodes serving one function, {CALLERS} callers, interleaved", flush=True)
    for transport in transports:
        async with AsyncExitStack() as stack:
            gateway = await stack.enter_async_context(_peers.gateway(transport))
            address = f"{transport}://{gateway.address}"
            keyed = []
            async with AsyncClient(address, timeout=60.0) as client:
                for count in budget.nodes:
                    process = await stack.enter_async_context(
                        _peers.nodes(address, count, function=f"f{count}", prefix=f"n{count}"))
                    contender = easyremote_contender(f"{transport} {count} nodes", client,
                                                     {"gateway": gateway.pid, "nodes": process.pid}, f"f{count}")
                    keyed.append((f"{transport} nodes {count}", contender, CALLERS))
                await interleave(results, keyed, budget)
        for count in budget.nodes:
            print(show(f"EasyRemote {transport}, {count} node(s)", results.get(f"{transport} nodes {count}"),
                       rate, "calls/s"), flush=True)


async def idle_memory(budget: Budget, transports: Sequence[str], nats_url: str | None,
                      nats_pid: int | None) -> dict[str, float]:
    """Gateway RSS growth per idle node (KiB), after the nodes registered and the gateway settled."""
    print(f"\n## Memory per idle node ({budget.idle_nodes} nodes)", flush=True)
    per_node: dict[str, float] = {}
    for transport in transports:
        rounds = []  # a fresh gateway each round: the allocator's arenas make one figure swing by KiB
        for _ in range(budget.rounds):
            async with _peers.gateway(transport) as gateway:
                address = f"{transport}://{gateway.address}"
                async with _peers.nodes(address, 2, prefix="warm"):  # the first links load code and buffers
                    await anyio.sleep(0.5)
                before = psutil.Process(gateway.pid).memory_info().rss
                async with _peers.nodes(address, budget.idle_nodes, prefix="idle"):
                    await anyio.sleep(1.0)
                    after = psutil.Process(gateway.pid).memory_info().rss
            rounds.append((after - before) / KIB / budget.idle_nodes)
        per_node[transport] = statistics.median(rounds)
        print(f"{'EasyRemote ' + transport + ' gateway':<46} {per_node[transport]:>10.1f} KiB/node"
              f"   (spread {min(rounds):.1f}–{max(rounds):.1f}, {len(rounds)} rounds)", flush=True)
    async with _peers.raw_grpc_server() as (port, pid):
        async with _peers.raw_grpc_idle(port, 2):
            await anyio.sleep(0.5)
        before = psutil.Process(pid).memory_info().rss
        async with _peers.raw_grpc_idle(port, budget.idle_nodes):
            await anyio.sleep(1.0)
            after = psutil.Process(pid).memory_info().rss
    per_node["raw grpc"] = (after - before) / KIB / budget.idle_nodes
    print(f"{'raw grpc.aio server, one idle bidi stream each':<46} {per_node['raw grpc']:>10.1f} KiB/client",
          flush=True)
    if nats_url is not None and nats_pid is not None:
        before = psutil.Process(nats_pid).memory_info().rss
        async with _peers.nats_idle(nats_url, budget.idle_nodes):
            await anyio.sleep(1.0)
            after = psutil.Process(nats_pid).memory_info().rss
        per_node["nats"] = (after - before) / KIB / budget.idle_nodes
        print(f"{'nats-server':<46} {per_node['nats']:>10.1f} KiB/connection", flush=True)
    else:
        print(f"{'nats-server':<46} not measured: {NATS_REASON}", flush=True)
    return per_node


# -- summary -------------------------------------------------------------------------------


@dataclass
class Target:
    what: str
    figure: float | None
    bound: float
    at_most: bool  # the figure must be <= bound (else >=)
    unit: str = "x"

    @property
    def status(self) -> str:
        if self.figure is None:
            return "not measured"
        met = self.figure <= self.bound if self.at_most else self.figure >= self.bound
        return "met" if met else "NOT MET"


def _ratio(a: Series | None, b: Series | None, value: Callable[[Window], float]) -> float | None:
    if a is None or b is None:
        return None
    return a.median(value) / b.median(value)


def summary(results: Results, memory: dict[str, float], budget: Budget, transports: Sequence[str]) -> None:
    get = results.get
    targets: list[Target] = []
    relay_floor: float | None = None
    for transport, versus_nats, seq_nats in (("tcp", 0.5, 1.5), ("grpc", 0.35, 2.0)):
        if transport not in transports:
            continue
        targets.append(Target(f"{transport}: {CALLERS} callers (async) ÷ NATS",
                              _ratio(get(f"{transport}-async x{CALLERS}"), get(f"nats x{CALLERS}"), rate),
                              versus_nats, at_most=False))
        targets.append(Target(f"{transport}: sequential p50 ÷ NATS",
                              _ratio(get(f"{transport}-async seq"), get("nats seq"), p50), seq_nats, at_most=True))
    if "grpc" in transports:
        targets.append(Target("grpc: sequential p50 ÷ raw gRPC unary",
                              _ratio(get("grpc-async seq"), get("raw-unary seq"), p50), 1.6, at_most=True))
        # Not a target: what the two links of a call cost on grpc.aio with nothing else.
        relay_floor = _ratio(get("raw-relay seq"), get("raw-unary seq"), p50)
    for transport in transports:
        targets.append(Target(f"{transport}: def ÷ async def, {CALLERS} callers",
                              _ratio(get(f"{transport}-sync x{CALLERS}"), get(f"{transport}-async x{CALLERS}"),
                                     rate), 0.85, at_most=False))
    big = 10 * MIB if 10 * MIB in budget.payloads else max(budget.payloads)
    for transport in transports:
        targets.append(Target(f"{transport}: {_size(big)} payload MB/s ÷ raw gRPC unary",
                              _ratio(get(f"EasyRemote {transport} {big}"), get(f"raw gRPC unary {big}"), rate),
                              0.6, at_most=False))
    most, least = max(budget.nodes), min(budget.nodes)
    for transport in transports:
        targets.append(Target(f"{transport}: {most} nodes ÷ {least} node",
                              _ratio(get(f"{transport} nodes {most}"), get(f"{transport} nodes {least}"), rate),
                              0.9, at_most=False))
    for transport in transports:
        series = get(f"{transport}-async x{CALLERS}")
        targets.append(Target(f"{transport}: CPU per call, 3 processes, {CALLERS} callers",
                              series.median(cpu) if series else None, 200, at_most=True, unit=" µs"))
    for transport in transports:
        targets.append(Target(f"{transport}: gateway memory per idle node", memory.get(transport), 30,
                              at_most=True, unit=" KiB"))
    rows = [("target", "figure", "bound", "status")]
    for target in targets:
        figure = "—" if target.figure is None else f"{target.figure:.2f}{target.unit}"
        bound = f"{'≤' if target.at_most else '≥'} {target.bound:g}{target.unit}"
        rows.append((target.what, figure, bound, target.status))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print(f"\nSummary (medians of {budget.rounds} interleaved rounds)", flush=True)
    print(f"machine: {machine()}", flush=True)
    if NATS_REASON:
        print(f"NATS: not measured: {NATS_REASON}", flush=True)
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), flush=True)
        if index == 0:
            print("  ".join("-" * width for width in widths), flush=True)
    if relay_floor is not None:
        nats_floor = _ratio(get("raw-relay seq"), get("nats seq"), p50)
        print(f"floor: raw gRPC bidi through a relay (two grpc.aio links, nothing else), sequential p50 = "
              f"{relay_floor:.2f}x raw gRPC unary" + (f", {nats_floor:.2f}x NATS" if nats_floor else ""), flush=True)
    if usable_cores() != 2:
        print(f"(the targets are set for 2 cores; {usable_cores()} are usable here)", flush=True)


def _size(size: int) -> str:
    return f"{size // MIB} MB" if size >= MIB else f"{size // KIB} KB"


NATS_REASON = ""


async def run(options: argparse.Namespace) -> None:
    global NATS_REASON
    budget = BUDGETS[options.budget]
    transports = options.transports
    NATS_REASON = _peers.nats_missing() or ""
    print(f"EasyRemote call benchmark ({options.budget}): {machine()}", flush=True)
    results = Results()
    async with AsyncExitStack() as stack:
        unary, bidi, relay, unary_with = await stack.enter_async_context(raw_grpc())
        nats = await stack.enter_async_context(nats_peer())
        contenders: dict[str, Contender] = {"raw-unary": unary, "raw-bidi": bidi, "raw-relay": relay}
        payload_contenders: dict[str, Callable[[bytes], Contender]] = {"raw gRPC unary": unary_with}
        caller_contenders: dict[str, Contender] = {}
        for transport in transports:
            client, pids, _ = await stack.enter_async_context(easyremote(transport))
            for kind, function in (("async", "aecho"), ("sync", "echo")):
                contenders[f"{transport}-{kind}"] = easyremote_contender(f"{transport} {kind}", client, pids,
                                                                         function)
            caller_contenders[f"EasyRemote {transport}"] = contenders[f"{transport}-async"]
            payload_contenders[f"EasyRemote {transport}"] = (
                lambda payload, c=client, p=pids, t=transport: easyremote_contender(t, c, p, "aecho", payload))
        nats_url = nats_pid = None
        if nats is not None:
            nats_with, nats_url, nats_pid = nats
            contenders["nats"] = nats_with(SMALL)
            caller_contenders["NATS"] = contenders["nats"]
            payload_contenders["NATS"] = nats_with
        await headline(results, budget, contenders)
        await payloads(results, budget, payload_contenders)
        await callers(results, budget, caller_contenders)
        await node_counts(results, budget, transports)
        memory = await idle_memory(budget, transports, nats_url, nats_pid)
    summary(results, memory, budget, transports)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 short rounds per comparison, a few minutes")
    parser.add_argument("--smoke", action="store_true", help="a few calls per line: proves it runs, measures nothing")
    parser.add_argument("--transports", default="grpc,tcp", help="comma-separated transports (default grpc,tcp)")
    options = parser.parse_args(argv)
    options.budget = "smoke" if options.smoke else "quick" if options.quick else "full"
    options.transports = [name.strip() for name in options.transports.split(",") if name.strip()]
    logging.basicConfig(level=logging.ERROR)
    started = time.perf_counter()
    run_loop(run, options)  # the client on the loop EasyRemote runs its own programs on
    print(f"\ntotal {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
