"""``easyremote demo``: a gateway, a node and a client on this machine, with a gateway restart."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread

from easyremote_core._backend import run as run_loop
from easyremote_core._client import AsyncClient
from easyremote_core._errors import EasyRemoteError
from easyremote_core._node import ComputeNode
from easyremote_core._supervisor import ConnectionState
from easyremote_core.testing.processes import GatewayProcess


def _functions(node: ComputeNode) -> None:
    @node.register(idempotent=True)
    def add(a: int, b: int) -> int:
        return a + b

    @node.register
    async def greet(name: str, punctuation: str = "!") -> str:
        return f"Hello, {name}{punctuation}"

    @node.register
    def squares(n: int):
        for i in range(n):
            yield i * i

    @node.register
    async def countdown(n: int):
        for i in range(n, 0, -1):
            yield i

    @node.register
    def divide(a: float, b: float) -> float:
        return a / b


class _Timeline:
    """When each state change happened, per role."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str, str]] = []

    def recorder(self, role: str) -> Callable[[ConnectionState, ConnectionState, str], None]:
        def record(old: ConnectionState, new: ConnectionState, reason: str) -> None:
            self.events.append((time.perf_counter(), role, new.value, reason))
        return record

    def first(self, role: str, state: str, after: float) -> tuple[float, str] | None:
        for when, who, what, reason in self.events:
            if who == role and what == state and when >= after:
                return when, reason
        return None


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


async def _demo(transport: str, outage: float) -> int:
    out = sys.stdout
    timeline = _Timeline()
    gateway = GatewayProcess(args=("--transport", transport))
    await anyio.to_thread.run_sync(gateway.start)
    address = f"{transport}://{gateway.address}"
    print(f"EasyRemote demo over {transport}", file=out)
    print(f"  gateway  {gateway.address} (a separate process, pid {gateway.pid})", file=out)
    node = ComputeNode(address, "demo-node", heartbeat_interval=1.0, heartbeat_timeout=4.0)
    _functions(node)
    node.on_state_change(timeline.recorder("node"))
    failures = 0
    try:
        async with node, AsyncClient(address, timeout=15) as client:
            client.on_state_change(timeline.recorder("client"))
            started = time.perf_counter()
            await node.wait_ready()
            print(f"  node     demo-node registered {len(node.functions)} functions in "
                  f"{_ms(time.perf_counter() - started)}", file=out)

            print("\ncalls", file=out)
            calls: list[tuple[str, Any]] = [
                ("add(2, 3)", client.execute("add", 2, 3)),
                ("greet('Ada', punctuation='?')", client.execute("greet", "Ada", punctuation="?")),
                ("list(squares(6))", _collect(client.stream("squares", 6))),
                ("list(countdown(3))", _collect(client.stream("countdown", 3))),
                ("divide(1, 0)", client.execute("divide", 1, 0)),
            ]
            for label, call in calls:
                began = time.perf_counter()
                try:
                    value = repr(await call)
                except EasyRemoteError as exc:
                    value = f"raised {type(exc).__name__}: {str(exc).splitlines()[0]}"
                print(f"  {label:32} -> {value:42} {_ms(time.perf_counter() - began)}", file=out)
            began = time.perf_counter()
            for i in range(200):
                await client.execute("add", i, 1)
            elapsed = time.perf_counter() - began
            print(f"  200 sequential add() calls       -> {200 / elapsed:,.0f} calls/s, "
                  f"{_ms(elapsed / 200)} each", file=out)

            print(f"\ngateway restart: SIGKILL, {outage:g} s down, started again on the same port", file=out)
            print("  (the client keeps calling add() all along)", file=out)
            done = anyio.Event()
            served_again = anyio.Event()  # a call succeeded after the gateway listened again
            results = {"ok": 0, "failed": 0}
            listening: float | None = None
            served = 0.0

            async def keep_calling() -> None:
                nonlocal served
                i = 0
                while not done.is_set():
                    i += 1
                    try:
                        assert await client.execute("add", i, 1) == i + 1
                        results["ok"] += 1
                        if listening is not None and not served_again.is_set():
                            served = time.perf_counter()
                            served_again.set()
                    except EasyRemoteError as exc:
                        results["failed"] += 1
                        print(f"  call failed: {type(exc).__name__}: {exc}", file=out)
                    await anyio.sleep(0.05)

            async with anyio.create_task_group() as tg:
                tg.start_soon(keep_calling)
                await anyio.sleep(0.3)
                killed = time.perf_counter()
                await anyio.to_thread.run_sync(gateway.kill)
                await anyio.sleep(outage)
                restart_began = time.perf_counter()
                await anyio.to_thread.run_sync(gateway.restart)
                listening = time.perf_counter()
                with anyio.fail_after(30):
                    await node.wait_ready()
                    await served_again.wait()
                await anyio.sleep(0.3)
                done.set()
            failures = results["failed"]
            assert listening is not None

            lost = timeline.first("node", "reconnecting", killed)
            ready = timeline.first("node", "ready", killed)
            client_ready = timeline.first("client", "ready", killed)
            if lost:
                print(f"  node noticed the loss         {_ms(lost[0] - killed):>10} after the kill ({lost[1]})",
                      file=out)
            print(f"  gateway listening again       {_ms(listening - killed):>10} after the kill "
                  f"(start-up took {_ms(listening - restart_began)})", file=out)
            if ready:
                print(f"  node re-registered            {_ms(ready[0] - listening):>10} after the gateway "
                      "listened again", file=out)
            if client_ready:
                print(f"  client reconnected            {_ms(client_ready[0] - listening):>10} after the gateway "
                      "listened again", file=out)
            print(f"  first call served again       {_ms(served - listening):>10} after the gateway "
                  "listened again", file=out)
            print(f"  calls during the test: {results['ok']} succeeded, {results['failed']} failed", file=out)
            print(f"  node status: {node.status()}", file=out)
            print(f"  client: {client.reconnect_count} reconnection(s) in {client.reconnect_attempts} "
                  "attempt(s)", file=out)
    finally:
        await anyio.to_thread.run_sync(gateway.close)
    print("\ndone: the node reconnected and re-registered by itself; no call was lost." if not failures
          else f"\ndone, with {failures} failed call(s)", file=out)
    return 0 if not failures else 1


async def _collect(iterator: Any) -> list[Any]:
    return [item async for item in iterator]


class _PeerFormatter(logging.Formatter):
    """An indented log line that says whose it is: ``node``, ``client`` (or the logger's own name)."""

    def __init__(self) -> None:
        super().__init__("    %(asctime)s.%(msecs)03d %(peer)-6s %(levelname)-7s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record.peer = _peer(record)
        return super().format(record)


class _OncePerPeer(logging.Filter):
    """Drops a line identical to the one just printed for the same peer."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, tuple[int, str]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        line = (record.levelno, record.getMessage())
        peer = _peer(record)
        if self._last.get(peer) == line:
            return False
        self._last[peer] = line
        return True


def _peer(record: logging.LogRecord) -> str:
    """``easyremote.node`` (the node and its connection supervisor) is ``node``, and so on."""
    return record.name.removeprefix("easyremote.")


def run_demo(transport: str = "grpc", outage: float = 2.0) -> int:
    """Run the demo; 0 when every call succeeded."""
    package = logging.getLogger("easyremote")  # every EasyRemote logger in this process
    quiet = {name: logging.getLogger(name) for name in ("easyremote.gateway", "easyremote.link")}
    levels = {name: logger.level for name, logger in quiet.items()}
    for logger in quiet.values():
        logger.setLevel(logging.WARNING)
    # The node's and the client's log lines go into the report, each saying whose it is.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_PeerFormatter())
    handler.addFilter(_OncePerPeer())
    package.addHandler(handler)
    propagate, package.propagate = package.propagate, False
    try:
        return run_loop(_demo, transport, outage)
    finally:
        package.removeHandler(handler)
        package.propagate = propagate
        for name, logger in quiet.items():
            logger.setLevel(levels[name])
