"""A chaos soak: two gateways, three nodes and callers on loopback under random kills, freezes and black holes.

Run ``python benchmarks/chaos_soak.py`` (``--minutes 8``, ``--seed 7``, ``--transport tcp``, ``--check``).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # keep gRPC core info logs out of the node logs

import anyio
import anyio.to_thread

from easyremote import AsyncClient
from easyremote.errors import ConnectionLostError, EasyRemoteError, NodeLostError
from easyremote_core._backend import run as run_loop
from easyremote_core.testing.chaos import ChaosProxy, ThreadedChaosProxy
from easyremote_core.testing.processes import GatewayProcess, PythonProcess

#: Short settings, in the guide's proportions, so that every fault is noticed within seconds.
HEARTBEAT_INTERVAL = 0.5
HEARTBEAT_TIMEOUT = 2.5
NODE_GRACE = 30.0  # how long a gateway holds the calls of a node that went silent
CALL_TIMEOUT = 30.0  # long enough to ride out any outage the schedule makes
HUNG_MARGIN = 15.0  # a call with no answer after CALL_TIMEOUT + this is hung
PEER_SETTINGS: dict[str, Any] = dict(heartbeat_interval=HEARTBEAT_INTERVAL, heartbeat_timeout=HEARTBEAT_TIMEOUT,
                     reconnect_interval=0.5, max_reconnect_interval=4.0, connection_timeout=2.0,
                     health_check_interval=1.0)
GATEWAYS = 2
NODES = 3
CLIENTS = 2
CALLERS_PER_KIND = 3  # idempotent callers and as many non-idempotent ones, spread over the clients
MEAN_FAULT_GAP = 2.5  # seconds between fault starts, exponentially distributed
MAX_FAULTS_AT_ONCE = 3
#: A gateway fault while the other gateway is down goes ahead this often, and is brief: both are down briefly.
BOTH_GATEWAYS_DOWN_CHANCE = 0.6
REGISTERED = "Registered to VPS successfully"
MAY_NOT_HAVE_RUN = "may or may not have run"

NODE_SCRIPT = """
import logging, os, sys, time
from easyremote import ComputeNode

node_id, addresses, run_log, settings = sys.argv[1], sys.argv[2], sys.argv[3], eval(sys.argv[4])
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
runs = os.open(run_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
node = ComputeNode(addresses, node_id, max_concurrency=16, **settings)

@node.register(idempotent=True)
def lookup(token, seconds):
    time.sleep(seconds)
    return f"{token} {node_id}"

@node.register
def charge(token, seconds):
    os.write(runs, f"{token} {node_id} {os.getpid()}\\n".encode())  # one O_APPEND write per run
    time.sleep(seconds)
    return f"{token} {node_id}"

node.serve()
"""

FAULT_KINDS = {
    "gateway-kill": "gateway SIGKILLed, restarted",
    "gateway-stop": "gateway SIGSTOPped, SIGCONTed",
    "node-kill": "node SIGKILLed, restarted",
    "node-stop": "node SIGSTOPped, SIGCONTed",
    "blackhole-short": f"node-gateway link black-holed < {HEARTBEAT_TIMEOUT:g} s",
    "blackhole-long": f"node-gateway link black-holed > {HEARTBEAT_TIMEOUT:g} s",
}
FAULT_WEIGHTS = {"gateway-kill": 2, "gateway-stop": 2, "node-kill": 1.5, "node-stop": 1.5,
                 "blackhole-short": 1.5, "blackhole-long": 1.5}


def stamp(moment: float) -> str:
    """Wall-clock time as the gateways' and nodes' log lines print it."""
    return time.strftime("%H:%M:%S", time.localtime(moment)) + f",{int(moment % 1 * 1000):03d}"


async def in_thread(func: Callable[..., Any], *args: Any) -> Any:
    return await anyio.to_thread.run_sync(func, *args)


# -- the world: processes and proxies ------------------------------------------------------


@dataclass
class World:
    """Every process and proxy of the soak; ``build`` starts them, its exit stack stops them."""

    transport: str
    logs: Path
    gateways: list[GatewayProcess] = field(default_factory=list)
    nodes: list[PythonProcess] = field(default_factory=list)
    proxies: dict[tuple[int, int], ThreadedChaosProxy] = field(default_factory=dict)  # (node, gateway)

    @classmethod
    @contextmanager
    def build(cls, transport: str, logs: Path) -> Iterator[World]:
        world = cls(transport, logs)
        with ExitStack() as stack:  # unwinds on any exit, Ctrl+C included: nodes, proxies, gateways
            args = ("--transport", transport, "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT),
                    "--node-grace", str(NODE_GRACE))
            for g in range(GATEWAYS):
                gateway = stack.enter_context(GatewayProcess(args=args, log_path=logs / f"gateway-{g}.log"))
                world.gateways.append(gateway)
                gateway.start()
            for n in range(NODES):
                for g, gateway in enumerate(world.gateways):
                    world.proxies[n, g] = stack.enter_context(ChaosProxy.in_thread(gateway.port))
            for n in range(NODES):
                addresses = ",".join(f"{transport}://{world.proxies[n, g].address}" for g in range(GATEWAYS))
                node = PythonProcess(NODE_SCRIPT, name=f"node-{n}", log_path=logs / f"node-{n}.log",
                                     args=(world.node_id(n), addresses, str(world.run_log(n)), repr(PEER_SETTINGS)))
                world.nodes.append(stack.enter_context(node))
                node.start()
            for node in world.nodes:
                node.wait_for_line(REGISTERED, 60.0, count=GATEWAYS)
            yield world

    @staticmethod
    def node_id(n: int) -> str:
        return f"soak-node-{n}"

    def run_log(self, n: int) -> Path:
        return self.logs / f"runs-{n}.txt"

    def client_address(self, first: int) -> str:
        """Both gateways, ``first`` listed first: the clients start on different gateways."""
        order = [first % GATEWAYS, *(g for g in range(GATEWAYS) if g != first % GATEWAYS)]
        return ",".join(f"{self.transport}://{self.gateways[g].address}" for g in order)

    def runs(self) -> dict[str, list[tuple[str, str]]]:
        """Every run of the non-idempotent function in the node logs: token -> [(node id, pid)]."""
        found: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for n in range(NODES):
            path = self.run_log(n)
            if path.exists():
                for line in path.read_text().splitlines():
                    token, node_id, pid = line.split()
                    found[token].append((node_id, pid))
        return found


# -- the fault schedule --------------------------------------------------------------------


@dataclass
class Timeline:
    """What was done when (wall clock), and when each gateway was down and each node killed."""

    events: list[tuple[float, str]] = field(default_factory=list)
    gateway_down: dict[int, list[list[float]]] = field(default_factory=lambda: defaultdict(list))
    node_kills: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    injected: Counter[str] = field(default_factory=Counter)

    def note(self, text: str) -> float:
        moment = time.time()
        self.events.append((moment, text))
        return moment

    def down(self, g: int, text: str) -> list[float]:
        span = [self.note(text), float("inf")]
        self.gateway_down[g].append(span)
        return span

    def gateway_up_at(self, moment: float) -> bool:
        return any(not any(start <= moment <= end for start, end in self.gateway_down[g]) for g in range(GATEWAYS))

    def killed_between(self, node_id: str | None, start: float, end: float) -> bool:
        """Whether that node (any node, for ``None``) was SIGKILLed between ``start`` and ``end``."""
        kills = self.node_kills.values() if node_id is None else [self.node_kills[node_id]]
        return any(start <= moment <= end for moments in kills for moment in moments)

    def both_down(self) -> list[tuple[float, float]]:
        """The spans in which no gateway was up."""
        edges = sorted({t for spans in self.gateway_down.values() for span in spans for t in span})
        spans: list[tuple[float, float]] = []
        for start, end in zip(edges, edges[1:], strict=False):
            if not self.gateway_up_at((start + end) / 2):
                if spans and spans[-1][1] == start:
                    spans[-1] = (spans[-1][0], end)
                else:
                    spans.append((start, end))
        return spans

    def around(self, start: float, end: float, before: float = 4.0) -> list[str]:
        return [f"    {stamp(t)} {text}" for t, text in self.events if start - before <= t <= end + 1.0]


class Chaos:
    """Injects faults on a seeded random schedule; each fault owns its target until it has undone itself."""

    def __init__(self, world: World, rng: random.Random, timeline: Timeline) -> None:
        self.world = world
        self.rng = rng
        self.timeline = timeline
        self.busy: set[str] = set()

    async def run(self, deadline: float) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                await anyio.sleep(min(self.rng.expovariate(1 / MEAN_FAULT_GAP), max(0.0, deadline - time.time())))
                if time.time() >= deadline:
                    break
                if len(self.busy) < MAX_FAULTS_AT_ONCE:
                    fault = self.pick()
                    if fault is not None:
                        tg.start_soon(fault)
        self.timeline.note("faults end; everything restored")

    def pick(self) -> Callable[[], Any] | None:
        kinds = list(FAULT_WEIGHTS)
        kind = self.rng.choices(kinds, weights=[FAULT_WEIGHTS[k] for k in kinds])[0]
        if kind.startswith("gateway"):
            free = [g for g in range(GATEWAYS) if f"gateway-{g}" not in self.busy]
            if not free or (len(free) < GATEWAYS and self.rng.random() > BOTH_GATEWAYS_DOWN_CHANCE):
                return None
            g = self.rng.choice(free)
            return self._owning(f"gateway-{g}", functools.partial(
                self.gateway_kill if kind == "gateway-kill" else self.gateway_stop, g, len(free) < GATEWAYS))
        if kind.startswith("node"):
            free = [n for n in range(NODES) if f"node-{n}" not in self.busy]
            if not free:
                return None
            n = self.rng.choice(free)
            return self._owning(f"node-{n}", functools.partial(
                self.node_kill if kind == "node-kill" else self.node_stop, n))
        links = [key for key in self.world.proxies if f"link-{key}" not in self.busy]
        if not links:
            return None
        n, g = self.rng.choice(links)
        seconds = self.rng.uniform(0.5, 1.8) if kind == "blackhole-short" else self.rng.uniform(3.5, 7.0)
        return self._owning(f"link-{(n, g)}", functools.partial(self.blackhole, kind, n, g, seconds))

    def _owning(self, target: str, fault: Callable[[], Any]) -> Callable[[], Any]:
        self.busy.add(target)

        async def run() -> None:
            try:
                await fault()
            finally:
                self.busy.discard(target)
        return run

    async def gateway_kill(self, g: int, brief: bool) -> None:
        gateway = self.world.gateways[g]
        down = self.rng.uniform(0.2, 1.5 if brief else 3.0)
        span = self.timeline.down(g, f"gateway-{g} SIGKILL (down {down:.1f} s)")
        self.timeline.injected["gateway-kill"] += 1
        await in_thread(gateway.kill)
        await anyio.sleep(down)
        await in_thread(gateway.start)
        span[1] = self.timeline.note(f"gateway-{g} restarted, listening")

    async def gateway_stop(self, g: int, brief: bool) -> None:
        gateway = self.world.gateways[g]
        frozen = self.rng.uniform(0.5, 2.0) if brief else self.rng.uniform(1.0, 6.0)
        span = self.timeline.down(g, f"gateway-{g} SIGSTOP ({frozen:.1f} s)")
        self.timeline.injected["gateway-stop"] += 1
        await in_thread(gateway.stop)
        await anyio.sleep(frozen)
        await in_thread(gateway.cont)
        span[1] = self.timeline.note(f"gateway-{g} SIGCONT")

    async def node_kill(self, n: int) -> None:
        node = self.world.nodes[n]
        down = self.rng.uniform(0.2, 3.0)
        node_id = self.world.node_id(n)
        self.timeline.node_kills[node_id].append(self.timeline.note(f"{node_id} SIGKILL (down {down:.1f} s)"))
        self.timeline.injected["node-kill"] += 1
        await in_thread(node.kill)
        self.timeline.node_kills[node_id].append(self.timeline.note(f"{node_id} reaped"))
        await anyio.sleep(down)
        await in_thread(node.start)
        self.timeline.note(f"{node_id} restarted (a new run)")
        try:  # hold the node until it has registered somewhere, so the next fault finds it serving
            await in_thread(functools.partial(node.wait_for_line, REGISTERED, CALL_TIMEOUT))
            self.timeline.note(f"{node_id} registered again")
        except TimeoutError:
            self.timeline.note(f"{node_id} not registered within {CALL_TIMEOUT:g} s")

    async def node_stop(self, n: int) -> None:
        node = self.world.nodes[n]
        frozen = self.rng.uniform(1.0, 6.0)
        node_id = self.world.node_id(n)
        self.timeline.note(f"{node_id} SIGSTOP ({frozen:.1f} s)")
        self.timeline.injected["node-stop"] += 1
        await in_thread(node.stop)
        await anyio.sleep(frozen)
        await in_thread(node.cont)
        self.timeline.note(f"{node_id} SIGCONT")

    async def blackhole(self, kind: str, n: int, g: int, seconds: float) -> None:
        proxy = self.world.proxies[n, g]
        self.timeline.note(f"link {self.world.node_id(n)} <-> gateway-{g} black-holed ({seconds:.1f} s)")
        self.timeline.injected[kind] += 1
        await in_thread(proxy.blackhole)
        await anyio.sleep(seconds)
        await in_thread(proxy.heal)
        self.timeline.note(f"link {self.world.node_id(n)} <-> gateway-{g} healed")


# -- the callers ---------------------------------------------------------------------------


@dataclass
class CallRecord:
    idempotent: bool
    token: str
    caller: str
    gateway: str  # the gateway the client was sending through when the call began
    started: float
    ended: float = 0.0
    outcome: str = "pending"  # "ok", an error's type name, "hung" or "wrong result"
    message: str = ""
    result: str = ""


async def caller(name: str, client: AsyncClient, idempotent: bool, rng: random.Random, deadline: float,
                 records: list[CallRecord]) -> None:
    number = 0
    while time.time() < deadline:
        number += 1
        token = f"{name}-{number}"
        seconds = rng.uniform(0.0, 0.2) if idempotent else rng.uniform(0.2, 2.0)
        current = client._current
        record = CallRecord(idempotent, token, name, str(current.address) if current else "?", time.time())
        records.append(record)
        with anyio.move_on_after(CALL_TIMEOUT + HUNG_MARGIN) as scope:
            try:
                record.result = await client.execute("lookup" if idempotent else "charge", token, seconds,
                                                     timeout=CALL_TIMEOUT)
                record.outcome = "ok" if record.result.split()[0] == token else "wrong result"
            except EasyRemoteError as exc:
                record.outcome, record.message = type(exc).__name__, str(exc)
        if scope.cancelled_caught:
            record.outcome = "hung"
        record.ended = time.time()
        await anyio.sleep(rng.uniform(0.0, 0.3))


# -- the verdict ---------------------------------------------------------------------------


@dataclass
class Verdict:
    rows: list[tuple[str, str, str, bool | None]]  # label, figure, target, met (None: no target)
    misses: list[str]

    @property
    def met(self) -> bool:
        return all(met is not False for _, _, _, met in self.rows)


def judge(records: list[CallRecord], runs: dict[str, list[tuple[str, str]]], timeline: Timeline) -> Verdict:
    misses: list[str] = []

    def miss(kind: str, record: CallRecord) -> None:
        ran = ", ".join(f"{node} (pid {pid})" for node, pid in runs.get(record.token, [])) or "no run logged"
        misses.append(f"{kind}: {record.token} ({'idempotent' if record.idempotent else 'non-idempotent'}, via "
                      f"{record.gateway}) {stamp(record.started)} -> {stamp(record.ended)} "
                      f"{record.outcome}: {record.message or record.result}; runs: {ran}")
        misses.extend(timeline.around(record.started, record.ended))

    failures = Counter(r.outcome for r in records if r.outcome not in ("ok", "hung"))
    hung = ran_twice = lost = false_failed = failed_gateway_up = honest = unlogged = 0
    for record in records:
        logged = runs.get(record.token, [])
        if record.outcome == "hung":
            hung += 1
            miss("hung", record)
        if not record.idempotent and len(logged) > 1:
            ran_twice += 1
            miss("ran twice", record)
        if record.outcome == "ok":
            if not record.idempotent and [node for node, _ in logged] != [record.result.split()[1]]:
                unlogged += 1
                miss("succeeded without one logged run on the node that answered", record)
            continue
        if record.outcome == "hung":
            continue
        if record.idempotent:
            lost += 1
            miss("lost idempotent call", record)
        node = logged[0][0] if len(logged) == 1 else None
        node_lost = record.outcome in (NodeLostError.__name__, ConnectionLostError.__name__) \
            or MAY_NOT_HAVE_RUN in record.message
        killed = timeline.killed_between(node, record.started, record.ended)
        if not record.idempotent and node_lost and killed:
            honest += 1
            continue
        if not record.idempotent and node_lost and len(logged) == 1:
            false_failed += 1
            miss("falsely reported failed, its node survived", record)
        if timeline.gateway_up_at(record.ended):
            failed_gateway_up += 1
            miss("failed while a gateway was up", record)

    idempotent = sum(r.idempotent for r in records)
    succeeded = sum(r.outcome == "ok" for r in records)
    both = timeline.both_down()
    rows: list[tuple[str, str, str, bool | None]] = [
        ("calls made", f"{len(records)} ({idempotent} idempotent, {len(records) - idempotent} not)", "", None),
        ("succeeded", str(succeeded), "", None),
        *((f"failed: {kind}", str(count), "", None) for kind, count in sorted(failures.items())),
        ("failed: non-idempotent, node killed meanwhile (honest)", str(honest), "", None),
        (f"hung (no answer within {CALL_TIMEOUT:g} s + {HUNG_MARGIN:g} s)", str(hung), "0", hung == 0),
        ("ran twice (a token twice in the node logs)", str(ran_twice), "0", ran_twice == 0),
        ("lost idempotent calls (failed)", str(lost), "0", lost == 0),
        ("falsely reported failed, node survived", str(false_failed), "0", false_failed == 0),
        ("failed while at least one gateway was up", str(failed_gateway_up), "0", failed_gateway_up == 0),
        ("succeeded without one logged run", str(unlogged), "0", unlogged == 0),
        *((f"fault: {text}", str(timeline.injected[kind]), "", None) for kind, text in FAULT_KINDS.items()),
        ("fault: both gateways down at once", f"{len(both)} times, {sum(e - s for s, e in both):.1f} s in all",
         "", None),
    ]
    return Verdict(rows, misses)


def print_table(verdict: Verdict) -> None:
    header = ("figure", "count", "target", "status")
    cells = [(label, figure, target, "" if met is None else "met" if met else "NOT MET")
             for label, figure, target, met in verdict.rows]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(4)]
    for row in [header, tuple("-" * w for w in widths), *cells]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip(), flush=True)


# -- the soak ------------------------------------------------------------------------------


async def soak(world: World, options: argparse.Namespace) -> Verdict:
    rng = random.Random(options.seed)
    timeline = Timeline()
    records: list[CallRecord] = []
    async with AsyncClient(world.client_address(0), timeout=CALL_TIMEOUT, **PEER_SETTINGS) as first, \
            AsyncClient(world.client_address(1), timeout=CALL_TIMEOUT, **PEER_SETTINGS) as second:
        clients = [first, second]
        for client in clients:
            await client.wait_ready()
        for g, gateway in enumerate(world.gateways):
            timeline.note(f"gateway-{g} is {gateway.address}; its links to the nodes: "
                          + ", ".join(world.proxies[n, g].address for n in range(NODES)))
        begun = timeline.note("soak begins")
        deadline = begun + options.minutes * 60
        async with anyio.create_task_group() as tg:
            tg.start_soon(Chaos(world, random.Random(rng.random()), timeline).run, deadline)
            for index in range(2 * CALLERS_PER_KIND):
                idempotent = index % 2 == 0
                name = f"{'idem' if idempotent else 'once'}{index // 2}-s{options.seed}"
                tg.start_soon(caller, name, clients[index % CLIENTS], idempotent, random.Random(rng.random()),
                              deadline, records)
        timeline.note("every call has returned")
    verdict = judge(records, world.runs(), timeline)
    (world.logs / "timeline.txt").write_text("".join(f"{stamp(t)} {text}\n" for t, text in timeline.events))
    (world.logs / "calls.txt").write_text("".join(
        f"{stamp(r.started)} {stamp(r.ended)} {r.token} {r.gateway} {r.outcome} {r.message or r.result}\n"
        for r in records))
    (world.logs / "misses.txt").write_text("".join(line + "\n" for line in verdict.misses))
    return verdict


def _interrupted(exc: BaseException) -> bool:
    inner = getattr(exc, "exceptions", None)  # an exception group (a backport's on Python 3.10)
    if isinstance(inner, tuple):
        return any(_interrupted(one) for one in inner)
    return isinstance(exc, KeyboardInterrupt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="how long faults and calls go on (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule and the calls (default 1)")
    parser.add_argument("--transport", choices=("grpc", "tcp"), default="grpc", help="transport (default grpc)")
    parser.add_argument("--log-dir", type=Path, default=None, help="where logs go (default: a new temp dir)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    options = parser.parse_args(argv)
    logs = options.log_dir or Path(tempfile.mkdtemp(prefix="easyremote-chaos-soak-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"EasyRemote chaos soak: transport {options.transport}, {options.minutes:g} min, seed {options.seed}; "
          f"{GATEWAYS} gateways, {NODES} nodes, {2 * CALLERS_PER_KIND} callers on {CLIENTS} clients", flush=True)
    print(f"settings: heartbeat_interval {HEARTBEAT_INTERVAL:g} s, heartbeat_timeout {HEARTBEAT_TIMEOUT:g} s "
          f"(nodes, clients, gateways), gateways' node_grace {NODE_GRACE:g} s, call timeout {CALL_TIMEOUT:g} s",
          flush=True)
    print(f"logs: {logs}", flush=True)
    # The clients' log lines go to a file, beside the gateways' and nodes' logs.
    handler = logging.FileHandler(logs / "clients.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    easyremote = logging.getLogger("easyremote")
    easyremote.setLevel(logging.INFO)
    easyremote.addHandler(handler)
    easyremote.propagate = False
    # SIGTERM unwinds like Ctrl+C: every process and proxy the soak started is stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.time()
    try:
        with World.build(options.transport, logs) as world:
            verdict = run_loop(soak, world, options)
    except BaseException as exc:  # Ctrl+C reaches here as itself or inside the task groups' exception groups
        if not _interrupted(exc):
            raise
        print(f"interrupted after {time.time() - started:.0f} s; every process and proxy stopped", flush=True)
        return 130
    print(f"details of every miss: {logs / 'misses.txt'}; fault timeline: {logs / 'timeline.txt'}", flush=True)
    print(f"total {time.time() - started:.0f} s\n", flush=True)
    print_table(verdict)
    return 1 if options.check and not verdict.met else 0


if __name__ == "__main__":
    sys.exit(main())
