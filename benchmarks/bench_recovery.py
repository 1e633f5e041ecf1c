"""How fast EasyRemote notices a broken link and recovers from a gateway outage, beside the original's figures.

Run ``python benchmarks/bench_recovery.py`` (``--quick`` for fewer runs and shorter outages, ``--transport tcp``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # keep gRPC core info logs out of the figures

import anyio
import anyio.to_thread

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine

from easyremote import AsyncClient, ComputeNode, ConnectionState
from easyremote.errors import EasyRemoteError, NodeLostError

# Printed beside the figures: the reconnection timings the measured code actually uses.
from easyremote_core._backend import run as run_loop
from easyremote_core._reachability import LISTEN_CHECK_INTERVAL
from easyremote_core._supervisor import RETURN_SPREAD
from easyremote_core.testing.chaos import ChaosProxy
from easyremote_core.testing.processes import GatewayProcess, PythonProcess

READY = ConnectionState.READY
STARTUP_TIMEOUT = 30.0
TARGET = 1.0  # seconds: failures reported, and recovery, in under a second
#: The original EasyRemote on this machine (measured by the project before this rewrite).
ORIGINAL_CALLER_HANG = 299.0  # a caller waits this long when its node dies mid-call
ORIGINAL_NODE_RECOVERY = 11.0  # after a 30 s gateway outage, until its node works again
ORIGINAL_CLIENT_RECOVERY = 31.0  # after a 30 s gateway outage, until its client works again
#: The guide's high-availability settings, used where the default 15 s heartbeat timeout would dominate.
HA_SETTINGS = {"heartbeat_interval": 2.0, "heartbeat_timeout": 8.0}
SMOKE_HA_SETTINGS = {"heartbeat_interval": 0.5, "heartbeat_timeout": 2.0}
CALL_PERIOD = 0.05  # the client's loop calls this often during outages
CALL_TIMEOUT = 120.0  # generous: a call waits out the outage rather than fail
SLOW_CALL = 5.0  # seconds the function runs whose node is killed mid-call
CONNECTS = "%s service (attempt %d)"  # the supervisor logs this once per connection attempt
STORM_LIMIT = 1.5  # connection attempts per node per restart; more means nodes trip over each other
GO_AWAY = "Gateway asked to retry after %.1f s: %s"

VICTIM_SCRIPT = """
import logging, sys, time
from easyremote import ComputeNode

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
node = ComputeNode(sys.argv[1], sys.argv[2])

@node.register
def slow(seconds):
    print("slow call started", flush=True)
    time.sleep(seconds)
    return seconds

node.serve()
"""


@dataclass(frozen=True)
class Plan:
    """How many runs and how long the outages of one benchmark mode are."""

    name: str
    runs: int
    ha_settings: dict[str, float]
    outages: tuple[float, float]  # the short and the long gateway outage, seconds
    crowd: int
    crowd_restarts: int

    @classmethod
    def named(cls, name: str) -> Plan:
        return {
            "full": cls("full", 5, HA_SETTINGS, (5.0, 30.0), 200, 3),
            "quick": cls("quick", 3, HA_SETTINGS, (2.0, 10.0), 200, 1),
            "smoke": cls("smoke", 1, SMOKE_HA_SETTINGS, (1.0, 2.0), 20, 1),
        }[name]


# -- recording -----------------------------------------------------------------------------


class AttemptCounter(logging.Handler):
    """Counts the supervisor's log records by message format: connection attempts, go-aways."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg in (CONNECTS, GO_AWAY):
            self.counts[f"{record.name} {record.msg}"] += 1

    def attempts(self, role: str = "node") -> int:
        return self.counts[f"easyremote.{role} {CONNECTS}"]

    def go_aways(self, role: str = "node") -> int:
        return self.counts[f"easyremote.{role} {GO_AWAY}"]


@dataclass
class StateLog:
    """Every state change of one node or client, stamped with ``time.perf_counter()``."""

    changes: list[tuple[float, ConnectionState, ConnectionState, str]] = field(default_factory=list)
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def record(self, old: ConnectionState, new: ConnectionState, reason: str) -> None:
        self.changes.append((time.perf_counter(), old, new, reason))
        self._changed.set()
        self._changed = anyio.Event()

    @property
    def sessions(self) -> int:
        """How many times the peer has become ready."""
        return sum(1 for change in self.changes if change[2] is READY)

    async def first(self, since: float, predicate: Callable[[ConnectionState, ConnectionState], bool],
                    timeout: float) -> tuple[float, str]:
        """The time and reason of the first change at or after ``since`` that ``predicate(old, new)`` accepts."""
        with anyio.fail_after(timeout):
            while True:
                for stamp, old, new, reason in self.changes:
                    if stamp >= since and predicate(old, new):
                        return stamp, reason
                await self._changed.wait()

    async def left_ready(self, since: float, timeout: float) -> tuple[float, str]:
        return await self.first(since, lambda old, new: old is READY, timeout)

    async def ready(self, since: float, timeout: float) -> tuple[float, str]:
        return await self.first(since, lambda old, new: new is READY, timeout)


@dataclass
class Figure:
    """Seconds measured over several runs."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    @property
    def max(self) -> float:
        return max(self.values) if self.values else math.nan

    def percentile(self, q: float) -> float:
        if not self.values:
            return math.nan
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]

    def text(self, unit: str = "run") -> str:
        count = len(self.values)
        return f"median {_s(self.median)}  max {_s(self.max)}  ({count} {unit}{'s' if count != 1 else ''})"


@dataclass
class Row:
    measurement: str
    figure: str
    target: str
    met: bool | None  # None: shown for information, no target
    original: str


def _s(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    return f"{seconds * 1000:.0f} ms" if abs(seconds) < 1 else f"{seconds:.2f} s"


def report(label: str, figure: Figure, settings: str, unit: str = "run") -> None:
    print(f"{label:<58} {figure.text(unit):<40} {settings}".rstrip(), flush=True)


# -- processes -----------------------------------------------------------------------------


async def in_thread(func: Callable[..., Any], *args: Any) -> Any:
    return await anyio.to_thread.run_sync(func, *args)


def _stamped(func: Callable[[], Any]) -> Callable[[], float]:
    """``func`` run in a worker thread, returning the perf_counter time just before (signals) or after it."""
    def before() -> float:
        stamp = time.perf_counter()
        func()
        return stamp
    return before


def _after(func: Callable[[], Any]) -> Callable[[], float]:
    def after() -> float:
        func()
        return time.perf_counter()
    return after


@asynccontextmanager
async def gateway_process(transport: str, logs: Path, name: str) -> AsyncIterator[GatewayProcess]:
    """A gateway process on a fixed loopback port; its log (every run) is kept in ``logs``."""
    gateway = GatewayProcess(args=("--transport", transport), log_path=logs / f"gateway-{name}.log")
    try:
        await in_thread(gateway.start)
        yield gateway
    finally:
        with anyio.CancelScope(shield=True):
            await in_thread(gateway.close)


@asynccontextmanager
async def running_node(address: str, node_id: str, **settings: float) -> AsyncIterator[tuple[ComputeNode, StateLog]]:
    """A node in this process, registered with the gateway; yields it and its state log."""
    node = ComputeNode(address, node_id, **settings)
    log = StateLog()
    node.on_state_change(log.record)

    @node.register
    async def served_by() -> int:
        return log.sessions  # which session of this node answered

    async with node:
        with anyio.fail_after(STARTUP_TIMEOUT):
            await node.wait_ready()
        yield node, log


def settings_text(settings: dict[str, float] | None = None) -> str:
    if not settings:
        return ("[defaults: heartbeat 5 s / timeout 15 s, reconnect 2 s doubling to 60 s ±20 %, "
                f"listen check every {LISTEN_CHECK_INTERVAL:g} s, return spread 0-{RETURN_SPREAD:g} s]")
    return "[" + ", ".join(f"{key}={value:g}" for key, value in settings.items()) + ", rest default]"


# -- 1. detection --------------------------------------------------------------------------


async def detect_gateway_killed(plan: Plan, transport: str, logs: Path) -> Figure:
    """(a) The gateway process is SIGKILLed: how long until the node leaves ``ready``."""
    figure = Figure()
    async with gateway_process(transport, logs, "detect-kill") as gateway:
        for run in range(plan.runs):
            if run:
                await in_thread(gateway.start)
            async with running_node(f"{transport}://{gateway.address}", f"detect-kill-{run}") as (node, log):
                await anyio.sleep(0.2)
                killed = await in_thread(_stamped(gateway.kill))
                noticed, _ = await log.left_ready(killed, timeout=30)
                figure.values.append(noticed - killed)
    return figure


async def heartbeats_flowing(plan: Plan) -> None:
    """Let heartbeats flow, then return at a random phase between two of them.

    Silence is timed from the last frame received, so a fault at a fixed phase would
    measure the same figure every run; a random one shows the spread users see.
    """
    interval = plan.ha_settings["heartbeat_interval"]
    await anyio.sleep(random.uniform(interval, 2 * interval))


async def detect_gateway_hung(plan: Plan, transport: str, logs: Path) -> Figure:
    """(b) The gateway process is frozen with SIGSTOP: how long until the node leaves ``ready``."""
    figure = Figure()
    bound = plan.ha_settings["heartbeat_timeout"] * 3
    async with gateway_process(transport, logs, "detect-hung") as gateway:
        for run in range(plan.runs):
            address = f"{transport}://{gateway.address}"
            async with running_node(address, f"detect-hung-{run}", **plan.ha_settings) as (node, log):
                await heartbeats_flowing(plan)
                stopped = await in_thread(_stamped(gateway.stop))
                try:
                    noticed, _ = await log.left_ready(stopped, timeout=bound)
                finally:
                    await in_thread(gateway.cont)
                figure.values.append(noticed - stopped)
    return figure


async def detect_blackhole(plan: Plan, transport: str, logs: Path) -> Figure:
    """(c) The link silently drops every byte (a chaos proxy black-holes it): time until the node notices."""
    figure = Figure()
    bound = plan.ha_settings["heartbeat_timeout"] * 3
    async with gateway_process(transport, logs, "detect-blackhole") as gateway:
        for run in range(plan.runs):
            async with ChaosProxy(gateway.port) as proxy:
                address = f"{transport}://{proxy.address}"
                async with running_node(address, f"detect-blackhole-{run}", **plan.ha_settings) as (node, log):
                    await heartbeats_flowing(plan)
                    holed = time.perf_counter()
                    proxy.blackhole()
                    noticed, _ = await log.left_ready(holed, timeout=bound)
                    figure.values.append(noticed - holed)
    return figure


async def detect_node_killed(plan: Plan, transport: str, logs: Path) -> tuple[Figure, Counter[str]]:
    """(d) The node process is SIGKILLed during a 5 s call: how long until the caller's call fails."""
    figure = Figure()
    outcomes: Counter[str] = Counter()
    async with gateway_process(transport, logs, "detect-node-killed") as gateway:
        address = f"{transport}://{gateway.address}"
        async with AsyncClient(address, timeout=60.0) as client:
            for run in range(plan.runs):
                node_id = f"victim-{run}"
                victim = PythonProcess(VICTIM_SCRIPT, args=(address, node_id), name=node_id,
                                       log_path=logs / f"{node_id}.log")
                with victim:
                    victim.start()
                    await in_thread(victim.wait_for_line, "Registered to VPS successfully", STARTUP_TIMEOUT)
                    failed_at: list[tuple[float, BaseException | None]] = []
                    ended = anyio.Event()

                    async def call(node_id: str = node_id, ended: anyio.Event = ended,
                                   failed_at: list[tuple[float, BaseException | None]] = failed_at) -> None:
                        try:
                            await client.execute("slow", SLOW_CALL, node_id=node_id)
                        except EasyRemoteError as exc:
                            failed_at.append((time.perf_counter(), exc))
                        else:
                            failed_at.append((time.perf_counter(), None))
                        ended.set()

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(call)
                        await in_thread(victim.wait_for_line, "slow call started", 10.0)
                        await anyio.sleep(0.5)  # well into the call
                        killed = await in_thread(_stamped(victim.kill))
                        with anyio.fail_after(SLOW_CALL + 60):
                            await ended.wait()
                    stamp, error = failed_at[0]
                    outcomes[type(error).__name__ if error is not None else "returned (no failure)"] += 1
                    if isinstance(error, NodeLostError):
                        figure.values.append(stamp - killed)
    return figure, outcomes


# -- 2. recovery after an outage -------------------------------------------------------------


@dataclass
class CallRecord:
    started: float
    finished: float
    ok: bool
    value: Any  # the node session that answered, or the error's type name


class CallLoop:
    """Calls ``served_by`` every ``CALL_PERIOD`` seconds, one call at a time, recording each outcome."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.records: list[CallRecord] = []
        self._changed = anyio.Event()

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            try:
                value = await self.client.execute("served_by", timeout=CALL_TIMEOUT)
            except EasyRemoteError as exc:
                self.records.append(CallRecord(started, time.perf_counter(), False, type(exc).__name__))
            else:
                self.records.append(CallRecord(started, time.perf_counter(), True, value))
            self._changed.set()
            self._changed = anyio.Event()
            await anyio.sleep(CALL_PERIOD)

    async def first_success(self, since: float, session: int, timeout: float) -> CallRecord:
        """The first call that succeeded after ``since``, answered by session ``session`` of the node or later."""
        with anyio.fail_after(timeout):
            while True:
                for record in self.records:
                    if record.finished >= since and record.ok and record.value >= session:
                        return record
                await self._changed.wait()

    def failures(self, since: float, until: float) -> Counter[str]:
        return Counter(r.value for r in self.records if not r.ok and since <= r.finished <= until)


@dataclass
class Recovery:
    outage: float
    node: Figure = field(default_factory=Figure)
    client_link: Figure = field(default_factory=Figure)
    call: Figure = field(default_factory=Figure)
    failed_calls: Counter[str] = field(default_factory=Counter)
    calls: int = 0


async def recover_from_outages(plan: Plan, transport: str, logs: Path) -> list[Recovery]:
    """Kill the gateway, wait, restart it on the same port: time until the node and a call work again."""
    results = [Recovery(outage) for outage in plan.outages]
    async with gateway_process(transport, logs, "recovery") as gateway:
        address = f"{transport}://{gateway.address}"
        async with running_node(address, "recovery-node") as (node, node_log):
            client_log = StateLog()
            client = AsyncClient(address, timeout=CALL_TIMEOUT)
            client.on_state_change(client_log.record)
            async with client, anyio.create_task_group() as tg:
                loop = CallLoop(client)
                tg.start_soon(loop.run)
                await loop.first_success(0, 1, STARTUP_TIMEOUT)
                for result in results:
                    for _ in range(plan.runs):
                        await anyio.sleep(1.0)  # calls flowing normally
                        session = node_log.sessions
                        killed = await in_thread(_stamped(gateway.kill))
                        await anyio.sleep(result.outage)
                        listening = await in_thread(_after(gateway.start))
                        bound = 60 + result.outage
                        ready, _ = await node_log.ready(killed, timeout=bound)
                        client_ready, _ = await client_log.ready(killed, timeout=bound)
                        served = await loop.first_success(listening, session + 1, timeout=bound)
                        result.node.values.append(ready - listening)
                        result.client_link.values.append(client_ready - listening)
                        result.call.values.append(served.finished - listening)
                        result.failed_calls += loop.failures(killed, served.finished)
                        result.calls += sum(1 for r in loop.records if killed <= r.finished <= served.finished)
                tg.cancel_scope.cancel()
    return results


# -- 4. a node with two gateways -------------------------------------------------------------


@dataclass
class TwoGateways:
    noticed: Figure = field(default_factory=Figure)  # kill -> the link to it leaves ready
    back: Figure = field(default_factory=Figure)  # listening again -> that link ready again
    node_left_ready: int = 0  # times the node as a whole left ready (it has the other gateway)
    failed_calls: Counter[str] = field(default_factory=Counter)
    calls: int = 0


async def recover_one_of_two(plan: Plan, transport: str, logs: Path) -> TwoGateways:
    """A node and a client on two gateways; one gateway is SIGKILLed and restarted, again and again:
    the link to it, measured as a single gateway's link is in 1 and 2, and the node and calls meanwhile."""
    result = TwoGateways()
    async with gateway_process(transport, logs, "two-a") as first, gateway_process(transport, logs, "two-b") as other:
        address = f"{transport}://{first.address},{transport}://{other.address}"
        async with running_node(address, "two-gateways-node") as (node, node_log):
            gateways = node._supervisor
            assert gateways is not None
            link_log = StateLog()
            link = next(s for s in gateways.supervisors if str(s.address) == first.address)
            link.on_state_change(link_log.record)
            with anyio.fail_after(STARTUP_TIMEOUT):
                while not all(s.state is READY for s in gateways.supervisors):
                    await gateways.wait_changed()
            async with AsyncClient(address, timeout=CALL_TIMEOUT) as client, anyio.create_task_group() as tg:
                loop = CallLoop(client)
                tg.start_soon(loop.run)
                await loop.first_success(0, 1, STARTUP_TIMEOUT)
                began = time.perf_counter()
                for _ in range(plan.runs):
                    await anyio.sleep(1.0)
                    killed = await in_thread(_stamped(first.kill))
                    noticed, _ = await link_log.left_ready(killed, timeout=30)
                    await anyio.sleep(1.0)
                    listening = await in_thread(_after(first.start))
                    ready, _ = await link_log.ready(listening, timeout=60)
                    result.noticed.values.append(noticed - killed)
                    result.back.values.append(ready - listening)
                await anyio.sleep(1.0)
                ended = time.perf_counter()
                result.failed_calls = loop.failures(began, ended)
                result.calls = sum(1 for r in loop.records if began <= r.finished <= ended)
                tg.cancel_scope.cancel()
            result.node_left_ready = sum(1 for stamp, old, _, _ in node_log.changes if old is READY and stamp >= began)
    return result


# -- 3. many nodes returning together --------------------------------------------------------


@dataclass
class CrowdRestart:
    nodes: int
    times: Figure  # each node's re-registration, from "gateway listening again"
    attempts: int  # connection attempts the nodes made after the restart
    go_aways: int  # attempts the gateway turned away as busy
    gateway_sessions: int  # "Node … connected from" lines in the restarted gateway's log


async def crowd_returns(plan: Plan, transport: str, logs: Path, counter: AttemptCounter) -> list[CrowdRestart]:
    """``plan.crowd`` nodes in this process; the gateway is SIGKILLed and restarted at once."""
    results: list[CrowdRestart] = []
    ready_at: dict[str, float] = {}  # each node's latest "ready", perf_counter time
    changed = anyio.Event()

    def returned(since: float) -> int:
        return sum(1 for stamp in ready_at.values() if stamp >= since)

    async with gateway_process(transport, logs, "crowd") as gateway:
        address = f"{transport}://{gateway.address}"
        nodes: list[ComputeNode] = []
        async with anyio.create_task_group() as tg:
            for index in range(plan.crowd):
                node = ComputeNode(address, f"crowd-{index:03d}")

                def record(old: ConnectionState, new: ConnectionState, reason: str,
                           node_id: str = node.node_id) -> None:
                    nonlocal changed
                    if new is READY:
                        ready_at[node_id] = time.perf_counter()
                        changed.set()
                        changed = anyio.Event()

                node.on_state_change(record)

                @node.register
                async def served_by() -> int:
                    return 1

                nodes.append(node)
                await tg.start(node.run)
            with anyio.fail_after(60):
                while returned(0) < plan.crowd:
                    await changed.wait()
            for _ in range(plan.crowd_restarts):
                await anyio.sleep(1.0)
                attempts, go_aways = counter.attempts(), counter.go_aways()
                killed = await in_thread(_stamped(gateway.kill))
                listening = await in_thread(_after(gateway.start))
                with anyio.fail_after(120):
                    while returned(killed) < plan.crowd:
                        await changed.wait()
                times = Figure([stamp - listening for stamp in ready_at.values()])
                sessions = sum(1 for text in gateway.lines() if "connected from" in text and "Node " in text)
                results.append(CrowdRestart(plan.crowd, times, counter.attempts() - attempts,
                                            counter.go_aways() - go_aways, sessions))
            for node in nodes:
                node.stop()
    return results


# -- summary ---------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else "met" if ok else "NOT MET"


def print_table(rows: Sequence[Row]) -> None:
    header = ("measurement", "figure (median)", "target", "status", "original EasyRemote")
    cells = [(r.measurement, r.figure, r.target, verdict(r.met), r.original) for r in rows]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(5)]
    for row in [header, tuple("-" * w for w in widths), *cells]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip(), flush=True)


async def run(options: argparse.Namespace) -> None:
    plan: Plan = options.plan
    transport: str = options.transport
    logs: Path = options.log_dir
    counter: AttemptCounter = options.counter
    print(f"EasyRemote recovery benchmark ({plan.name}, transport {transport}): {machine()}", flush=True)
    ha = settings_text(plan.ha_settings)
    rows: list[Row] = []

    print("\n1. Detection: from the fault to the node leaving 'ready' (or the caller's call failing)", flush=True)
    killed = await detect_gateway_killed(plan, transport, logs)
    report("(a) gateway SIGKILLed -> node notices", killed, settings_text())
    hung = await detect_gateway_hung(plan, transport, logs)
    report("(b) gateway hung (SIGSTOP) -> node notices", hung, ha)
    holed = await detect_blackhole(plan, transport, logs)
    report("(c) link black-holed (chaos proxy) -> node notices", holed, ha)
    lost, outcomes = await detect_node_killed(plan, transport, logs)
    report(f"(d) node SIGKILLed in a {SLOW_CALL:g} s call -> NodeLostError", lost, settings_text())
    print(f"    the killed calls ended with: {dict(outcomes)}", flush=True)
    spec_bound = plan.ha_settings["heartbeat_timeout"] * 1.1
    bounded = f"<= heartbeat_timeout +10 % ({spec_bound:g} s)"
    rows += [
        Row("1a gateway killed: node notices", _fig(killed), "< 1 s", killed.median < TARGET, "n/a"),
        Row("1b gateway hung: node notices", _fig(hung), bounded, hung.max <= spec_bound, "n/a"),
        Row("1c link black-holed: node notices", _fig(holed), bounded, holed.max <= spec_bound, "n/a"),
        Row("1d node killed mid-call: caller fails", _fig(lost), "< 1 s, NodeLostError",
            bool(lost.values) and lost.median < TARGET and outcomes["NodeLostError"] == plan.runs,
            f"hangs {ORIGINAL_CALLER_HANG:g} s"),
    ]

    print("\n2. Recovery: gateway SIGKILLed, down for the outage, restarted on the same port; "
          "times from 'gateway listening again'", flush=True)
    print(f"   a client calls every {CALL_PERIOD * 1000:g} ms throughout (timeout {CALL_TIMEOUT:g} s); "
          f"{settings_text()}", flush=True)
    for result in await recover_from_outages(plan, transport, logs):
        outage = f"{result.outage:g} s outage"
        report(f"(i)  {outage}: node registered again", result.node, "")
        report(f"     {outage}: client link ready again", result.client_link, "")
        report(f"(ii) {outage}: first call served by the returned node", result.call, "")
        failed = sum(result.failed_calls.values())
        print(f"     {outage}: {failed} of {result.calls} calls failed over {plan.runs} outage(s)"
              f"{': ' + str(dict(result.failed_calls)) if failed else ''}", flush=True)
        original = result.outage == 30
        rows += [
            Row(f"2i  {outage}: node registered again", _fig(result.node), "< 1 s", result.node.median < TARGET,
                f"{ORIGINAL_NODE_RECOVERY:g} s" if original else "n/a"),
            Row(f"2ii {outage}: first call served", _fig(result.call), "< 1 s", result.call.median < TARGET,
                f"{ORIGINAL_CLIENT_RECOVERY:g} s" if original else "n/a"),
            Row(f"2   {outage}: calls failed", f"{failed} of {result.calls}", "(shown)", None, "n/a"),
        ]

    print(f"\n3. {plan.crowd} nodes in one process return together: gateway SIGKILLed and restarted at once; "
          f"{settings_text()}", flush=True)
    crowd = await crowd_returns(plan, transport, logs, counter)
    for index, result in enumerate(crowd, 1):
        times = result.times
        print(f"restart {index}: re-registered median {_s(times.median)}  p90 {_s(times.percentile(90))}  "
              f"last {_s(times.max)};  {result.attempts} connection attempts by {result.nodes} nodes "
              f"({result.attempts / result.nodes:.2f} per node), {result.go_aways} turned away as busy, "
              f"{result.gateway_sessions} node sessions in the gateway's log", flush=True)
    pooled = Figure([value for result in crowd for value in result.times.values])
    last = Figure([result.times.max for result in crowd])
    per_node = max(result.attempts / result.nodes for result in crowd)
    report("all restarts: each node re-registered", pooled, f"p90 {_s(pooled.percentile(90))}", unit="node")
    report(f"all restarts: the last of {plan.crowd} nodes re-registered", last, "", unit="restart")
    rows += [
        Row(f"3   {plan.crowd} nodes: each re-registered", f"{_fig(pooled)}, p90 {_s(pooled.percentile(90))}",
            "< 1 s", pooled.median < TARGET, "n/a"),
        Row(f"3   {plan.crowd} nodes: the last re-registered", _fig(last), "(shown)", None, "n/a"),
        Row(f"3   {plan.crowd} nodes: connection attempts per node", f"{per_node:.2f} (worst restart)",
            f"<= {STORM_LIMIT:g} (no storm)", per_node <= STORM_LIMIT, "n/a"),
    ]

    print(f"\n4. A node and a client with two gateways; one is SIGKILLed, down 1 s, restarted ({plan.runs} times); "
          f"{settings_text()}", flush=True)
    two = await recover_one_of_two(plan, transport, logs)
    report("(a) its link notices", two.noticed, "")
    report("(b) its link registered again, from 'gateway listening again'", two.back, "")
    failed_two = sum(two.failed_calls.values())
    print(f"    the node left 'ready' {two.node_left_ready} time(s); {failed_two} of {two.calls} calls failed"
          f"{': ' + str(dict(two.failed_calls)) if failed_two else ''}", flush=True)
    rows += [
        Row("4a two gateways, one killed: its link notices", _fig(two.noticed), "< 1 s", two.noticed.median < TARGET,
            "n/a"),
        Row("4b two gateways, one restarted: its link back", _fig(two.back), "< 1 s", two.back.median < TARGET, "n/a"),
        Row("4  two gateways: node left ready / calls failed", f"{two.node_left_ready} / {failed_two} of {two.calls}",
            "0 / 0", two.node_left_ready == 0 and failed_two == 0, "n/a"),
    ]

    print("\nSummary", flush=True)
    print(f"machine: {machine()}", flush=True)
    print(f"transport {transport}; mode {plan.name} (runs {plan.runs}, outages "
          f"{' and '.join(f'{o:g} s' for o in plan.outages)}); logs in {logs}", flush=True)
    print(f"original EasyRemote on this machine: a caller hangs {ORIGINAL_CALLER_HANG:g} s when its node dies; "
          f"after a 30 s outage its node needs {ORIGINAL_NODE_RECOVERY:g} s and its client "
          f"{ORIGINAL_CLIENT_RECOVERY:g} s", flush=True)
    print_table(rows)


def _fig(figure: Figure) -> str:
    """A figure for the summary: the median, and the max beside it."""
    return f"{_s(figure.median)} (max {_s(figure.max)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs, 2 s and 10 s outages: about 2 minutes")
    parser.add_argument("--smoke", action="store_true", help="one run of each, short outages: proves it runs")
    parser.add_argument("--transport", default="grpc", help="transport to measure (default grpc)")
    parser.add_argument("--log-dir", type=Path, default=None, help="where logs go (default: a new temp dir)")
    parser.add_argument("--debug", action="store_true", help="log at DEBUG (in the log dir)")
    options = parser.parse_args(argv)
    options.plan = Plan.named("smoke" if options.smoke else "quick" if options.quick else "full")
    options.log_dir = options.log_dir or Path(tempfile.mkdtemp(prefix="easyremote-bench-recovery-"))
    options.log_dir.mkdir(parents=True, exist_ok=True)
    # This process's nodes and clients log to a file; the counter reads the attempts from the same records.
    handler = logging.FileHandler(options.log_dir / "benchmark.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    options.counter = AttemptCounter()
    easyremote = logging.getLogger("easyremote")
    easyremote.setLevel(logging.DEBUG if options.debug else logging.INFO)
    easyremote.addHandler(handler)
    easyremote.addHandler(options.counter)
    easyremote.propagate = False
    started = time.perf_counter()
    run_loop(run, options)  # the loop EasyRemote runs its own programs on (uvloop when installed)
    print(f"\ntotal {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
