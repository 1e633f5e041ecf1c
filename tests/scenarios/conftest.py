"""Helpers for the reconnection scenarios: a real gateway process, a node and a client calling throughout."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import pytest

from easyremote import AsyncClient, ComputeNode
from easyremote.errors import EasyRemoteError
from easyremote_core.testing.processes import GatewayProcess

#: Fast settings so a scenario takes seconds; the relations between them are the guide's.
FAST = dict(heartbeat_interval=0.5, heartbeat_timeout=2.0, reconnect_interval=0.5, max_reconnect_interval=4.0,
            connection_timeout=1.5, health_check_interval=1.0)


@contextmanager
def gateway_process(transport: str, heartbeat_timeout: float = 2.0, node_grace: float = 30.0,
                    extra_args: tuple[str, ...] = ()) -> Iterator[GatewayProcess]:
    """A gateway that notices a silent node fast but lets calls wait long for it to return."""
    args = ("--transport", transport, "--heartbeat-timeout", str(heartbeat_timeout), "--node-grace", str(node_grace),
            *extra_args)
    with GatewayProcess(args=args) as gateway:
        gateway.start()
        yield gateway


async def in_thread(func: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(func, *args)


def scenario_node(address: str, node_id: str = "scenario-node", **options: Any) -> ComputeNode:
    node = ComputeNode(address, node_id, **{**FAST, **options})

    @node.register(idempotent=True)
    def add(a: int, b: int) -> int:
        return a + b

    @node.register
    async def slow_once(seconds: float) -> str:
        await anyio.sleep(seconds)
        return "ran"

    return node


@dataclass
class Calls:
    """A client calling add() every 0.1 s; each outcome is recorded with its time."""

    client: AsyncClient
    outcomes: list[tuple[float, str]] = field(default_factory=list)
    _changed: anyio.Event = field(default_factory=anyio.Event)

    async def run(self) -> None:
        i = 0
        while True:
            i += 1
            try:
                assert await self.client.execute("add", i, 1) == i + 1
                self._record("ok")
            except EasyRemoteError as exc:
                self._record(f"{type(exc).__name__}: {exc}")
            await anyio.sleep(0.1)

    def _record(self, outcome: str) -> None:
        self.outcomes.append((anyio.current_time(), outcome))
        self._changed.set()
        self._changed = anyio.Event()

    async def success_after(self, moment: float) -> float:
        """Wait for a successful call that finished after ``moment``; return when it finished."""
        while True:
            for when, outcome in self.outcomes:
                if when > moment and outcome == "ok":
                    return when
            await self._changed.wait()

    def failures(self) -> list[str]:
        return [outcome for _, outcome in self.outcomes if outcome != "ok"]


@asynccontextmanager
async def calling(address: str, *, serving: ComputeNode | None = None, **options: Any) -> AsyncIterator[Calls]:
    """A client calling add() throughout; with ``serving``, from when that node is ready (a gateway
    that never saw add served answers a call for it at once: no node serves it)."""
    settings = {**FAST, "timeout": 30.0, **options}
    async with AsyncClient(address, **settings) as client, anyio.create_task_group() as tg:
        if serving is not None:
            await serving.wait_ready()
        calls = Calls(client)
        tg.start_soon(calls.run)
        yield calls
        tg.cancel_scope.cancel()


class LogTimeline(logging.Handler):
    """Every ``easyremote.*`` log line with its time on the anyio clock; waits are event-driven."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[float, str, str]] = []
        self._changed = anyio.Event()
        self._thread = threading.get_ident()  # the test's event loop; peers left running elsewhere do not count

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self._thread:
            return
        try:
            now = anyio.current_time()
        except RuntimeError:  # logged from a worker thread: no clock there
            return
        self.records.append((now, record.name, record.getMessage()))
        self._changed.set()
        self._changed = anyio.Event()

    def lines(self, logger: str = "easyremote.node", after: float = float("-inf")) -> list[tuple[float, str]]:
        return [(when, line) for when, name, line in self.records if name == logger and when >= after]

    def first(self, text: str, after: float = float("-inf"), logger: str = "easyremote.node") -> float | None:
        return next((when for when, line in self.lines(logger, after) if text in line), None)

    async def wait_for(self, text: str, after: float = float("-inf"), logger: str = "easyremote.node",
                       *, within: float = 30.0) -> float:
        """When ``text`` was first logged after ``after``; fails after ``within`` seconds, showing
        what ``logger`` did log, so that a missing line is a readable failure, not a hung test."""
        with self._bounded(within, text, after, logger):
            while (when := self.first(text, after, logger)) is None:
                await self._changed.wait()
        return when

    async def wait_for_count(self, text: str, count: int, after: float = float("-inf"),
                             logger: str = "easyremote.node", *, within: float = 30.0) -> None:
        """Until ``count`` lines containing ``text`` were logged after ``after``."""
        with self._bounded(within, f"{count} × {text}", after, logger):
            while sum(text in line for _, line in self.lines(logger, after)) < count:
                await self._changed.wait()

    @contextmanager
    def _bounded(self, within: float, wanted: str, after: float, logger: str) -> Iterator[None]:
        with anyio.move_on_after(within) as scope:
            yield
        if scope.cancelled_caught:
            logged = "\n  ".join(line for _, line in self.lines(logger, after)[-20:]) or "(nothing)"
            raise AssertionError(f"{logger} did not log {wanted!r} within {within} s; it logged:\n  {logged}")


@pytest.fixture
async def timeline() -> AsyncIterator[LogTimeline]:
    handler = LogTimeline()
    logger = logging.getLogger("easyremote")
    previous = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
async def _one_event_loop_per_module(anyio_backend: str) -> AsyncIterator[None]:
    """Holding this fixture keeps one event loop for the whole module. grpc.aio finishes
    cancelled operations on the loop that started them; with a new loop per test they land
    on a closed one ("Event loop is closed")."""
    yield
