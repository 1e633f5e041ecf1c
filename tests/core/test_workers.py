"""The node's slots and worker threads: the max_concurrency bound over sync and async calls together,
cancellation before and during a call, batches, and threads that end with the pool."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from easyremote_core._workers import WorkerPool

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


class Meter:
    """Counts calls running at once, in threads and on the loop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


async def test_sync_and_async_calls_together_never_exceed_the_slots() -> None:
    pool = WorkerPool(3, "test-pool")
    meter = Meter()

    def blocking(i: int) -> int:
        with meter:
            time.sleep(0.01)
        return i

    async def asynchronous(i: int) -> int:
        await pool.acquire()
        try:
            with meter:
                await anyio.sleep(0.01)
        finally:
            pool.release()
        return -i

    results: list[int] = []

    async def one(i: int) -> None:
        results.append(await pool.run(lambda: blocking(i)) if i % 2 else await asynchronous(i))

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(one, i)
    pool.close()
    assert sorted(results) == sorted(i if i % 2 else -i for i in range(40))
    assert meter.most == 3
    assert pool.running == 0
    assert len(pool._threads) <= 3


async def test_quick_calls_under_load_come_back_in_batches() -> None:
    """100 quick sync calls through 2 slots: the threads pass their slots on among themselves and
    the loop is woken far fewer times than there are calls."""
    pool = WorkerPool(2, "test-pool")
    wakes = 0
    settle = pool._settle

    def counted() -> None:
        nonlocal wakes
        wakes += 1
        settle()

    pool._settle = counted  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(pool.run, lambda i=i: i)
    pool.close()
    assert wakes < 50, f"{wakes} wake-ups of the loop for 100 calls"


async def test_a_call_cancelled_while_it_waits_for_a_slot_never_runs() -> None:
    pool = WorkerPool(1, "test-pool")
    release = threading.Event()
    ran: list[str] = []

    def hold() -> None:
        release.wait(5)
        ran.append("hold")

    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.run, hold)
        await anyio.sleep(0.05)
        with anyio.move_on_after(0.05):
            await pool.run(lambda: ran.append("waiting"))
        release.set()
    await pool.run(lambda: ran.append("after"))
    pool.close()
    assert ran == ["hold", "after"]
    assert pool.running == 0


async def test_a_running_call_whose_caller_is_cancelled_is_abandoned_and_keeps_its_slot() -> None:
    pool = WorkerPool(1, "test-pool")
    release, finished = threading.Event(), threading.Event()

    def slow() -> None:
        release.wait(5)
        finished.set()

    with anyio.move_on_after(0.05):
        await pool.run(slow)
    assert pool.running == 1  # the thread still runs it
    release.set()
    assert await pool.run(lambda: "next") == "next"
    assert finished.is_set()
    pool.close()


async def test_an_async_call_cancelled_while_it_waits_gives_nothing_away() -> None:
    pool = WorkerPool(1, "test-pool")
    await pool.acquire()
    with anyio.move_on_after(0.05):
        await pool.acquire()
    pool.release()
    assert pool.running == 0
    await pool.acquire()  # the one slot is free again
    pool.release()
    pool.close()


async def test_exceptions_come_back_to_the_caller_and_threads_end_with_close() -> None:
    pool = WorkerPool(2, "test-pool")

    def fail() -> None:
        raise ValueError("from the thread")

    with pytest.raises(ValueError, match="from the thread"):
        await pool.run(fail)
    assert await pool.run(threading.current_thread) is not threading.current_thread()
    threads = list(pool._threads)
    pool.close()
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()
