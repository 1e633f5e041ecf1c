"""Clean teardown: a hundred forced reconnects leave tasks, threads, sockets and memory flat."""

from __future__ import annotations

import asyncio
import gc
import threading

import anyio
import psutil
import pytest

from easyremote import AsyncClient, ComputeNode, Gateway
from easyremote_core.testing.chaos import ChaosProxy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

RECONNECTS = 100


def snapshot() -> dict[str, float]:
    gc.collect()
    process = psutil.Process()
    return {"tasks": len(asyncio.all_tasks()), "threads": threading.active_count(),
            "sockets": len(process.net_connections(kind="inet")), "fds": process.num_fds(),
            "rss_mb": process.memory_info().rss / 2**20}


@pytest.mark.parametrize("transport", ["tcp", "grpc"])
async def test_a_hundred_forced_reconnects_leak_nothing(transport: str) -> None:
    async with Gateway(port=0, host="127.0.0.1", transport=transport, startup_grace=0) as gateway, \
            ChaosProxy(gateway.port) as proxy:
        node = ComputeNode(f"{transport}://{proxy.address}", "churn", reconnect_interval=0.01,
                           max_reconnect_interval=0.05, heartbeat_interval=1, heartbeat_timeout=5)
        started = anyio.Event()

        @node.register
        async def hold() -> None:
            started.set()
            await anyio.sleep_forever()  # cancelled once the node is back: the gateway reported it lost

        ready = anyio.Event()

        def on_state(old, new, reason) -> None:
            nonlocal ready
            if new.value == "ready":
                ready.set()

        node.on_state_change(on_state)
        async with node, AsyncClient(f"{transport}://127.0.0.1:{gateway.port}", timeout=30) as client, \
                anyio.create_task_group() as tg:
            await node.wait_ready()

            async def cycle() -> None:
                nonlocal ready, started
                started = anyio.Event()
                tg.start_soon(_call_and_ignore, client)  # a call in flight on the node when the link breaks
                await started.wait()
                ready = anyio.Event()
                await proxy.reset()
                await ready.wait()

            with anyio.fail_after(60):
                for _ in range(10):  # warm up: pools and caches reach their steady size
                    await cycle()
                await anyio.wait_all_tasks_blocked()
                before = snapshot()
                for _ in range(RECONNECTS):
                    await cycle()
                after = snapshot()
            tg.cancel_scope.cancel()

        assert node._reconnect_count >= RECONNECTS + 10
        assert len(node._active_executions) == 0 and len(node._execution_tasks) == 0
        # Bounds: a few tasks and sockets may be mid-teardown at any instant; nothing may grow with the count.
        assert after["tasks"] <= before["tasks"] + 5, (before, after)
        assert after["threads"] <= before["threads"] + 2, (before, after)
        assert after["sockets"] <= before["sockets"] + 6, (before, after)
        assert after["fds"] <= before["fds"] + 10, (before, after)
        assert after["rss_mb"] - before["rss_mb"] < 20, (before, after)


async def _call_and_ignore(client: AsyncClient) -> None:
    try:
        await client.execute("hold")
    except Exception:
        pass  # NodeLostError: the link it ran on was cut
