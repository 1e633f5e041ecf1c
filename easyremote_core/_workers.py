"""A node's concurrency slots, and the worker threads that run its sync functions with them."""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import sniffio

#: How long a worker thread goes on with sync calls waiting behind the one it ran before it
#: hands their results to the event loop.
BATCH_SECONDS = 0.0005

_STOP = None
_Job = tuple[contextvars.Context, Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]
_Done = tuple["asyncio.Future[Any]", Any, "BaseException | None"]


@dataclass(eq=False)
class _Waiter:
    event: anyio.Event = field(default_factory=anyio.Event)
    granted: bool = False


class WorkerPool:
    """``size`` slots for calls running at once, and up to ``size`` threads for sync functions.

    Async calls take a slot with :meth:`acquire` and give it back with :meth:`release`. Sync
    calls go to :meth:`run`: one that finds no free slot waits in a backlog, and a worker
    thread that finishes a call takes the next one from the backlog itself, passing its slot
    on without a trip through the event loop. Results go back to the loop in batches: a
    thread runs the calls waiting behind its own for up to ``BATCH_SECONDS`` and hands their
    results over together, and only the first batch of a turn of the loop wakes it. Under load
    many quick sync calls cost the loop one wake-up, and the gateway one write of their answers.

    A caller cancelled while its call runs abandons it (the thread finishes it, holding the
    slot, and the result is dropped), as with ``anyio.to_thread.run_sync(abandon_on_cancel=True)``.
    Threads start as calls need them and end with :meth:`close`. Under trio, sync calls run
    through ``anyio.to_thread``; the slots are the same.
    """

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._lock = threading.Lock()
        self._free = size
        self._backlog: deque[_Job] = deque()  # sync calls waiting for a slot
        self._waiters: deque[_Waiter] = deque()  # async calls waiting for a slot
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # sync calls holding a slot
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job
        self._finished: deque[_Done] = deque()
        self._released = 0  # slots threads gave back while async calls waited
        self._wake_pending = False
        self._closed = False

    @property
    def running(self) -> int:
        """Calls holding a slot now."""
        return self.size - self._free

    # -- async calls ---------------------------------------------------------------------

    async def acquire(self) -> None:
        """A slot for one call; a free one is taken without a yield."""
        with self._lock:
            if self._free > 0:
                self._free -= 1
                return
            waiter = _Waiter()
            self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            with self._lock:
                if not waiter.granted:
                    self._waiters.remove(waiter)
                    raise
            self.release()  # granted as it was cancelled: pass it on
            raise

    def release(self) -> None:
        """Give back the slot of a call that ended; called on the event loop."""
        with self._lock:
            self._pass_on()

    def _pass_on(self) -> None:
        """A slot is free (the lock is held): to a waiting sync call, a waiting async call, or free."""
        while self._backlog:
            job = self._backlog.popleft()
            if not job[2].done():  # its caller has not given up
                self._submit(job)
                return
        while self._waiters:
            waiter = self._waiters.popleft()
            waiter.granted = True
            waiter.event.set()
            return
        self._free += 1

    # -- sync calls ----------------------------------------------------------------------

    async def run(self, func: Callable[[], Any]) -> Any:
        """``func()`` in a worker thread, once a slot is free."""
        if sniffio.current_async_library() != "asyncio":
            await self.acquire()
            try:
                return await anyio.to_thread.run_sync(func, abandon_on_cancel=True)
            finally:
                self.release()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()
        context.run(sniffio.current_async_library_cvar.set, None)  # the function runs outside any event loop
        job = (context, func, future, loop)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            if self._free > 0:
                self._free -= 1
                self._submit(job)
            else:
                self._backlog.append(job)
        return await future  # cancelled: a call still waiting never runs; a running one is abandoned

    def _submit(self, job: _Job) -> None:
        """Hand a job that holds a slot to the threads (the lock is held)."""
        if self._idle > 0:
            self._idle -= 1
        elif len(self._threads) < self.size:
            thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads) + 1}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()
        self._jobs.put(job)

    def _work(self) -> None:
        clock = time.perf_counter
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            loop = job[3]
            done: list[_Done] = []
            until = clock() + BATCH_SECONDS
            while job is not None:
                context, func, future, loop = job
                try:
                    done.append((future, context.run(func), None))
                except BaseException as exc:  # handed to the caller, as to_thread does
                    done.append((future, None, exc))
                job = self._next(loop, done, past_batch=clock() >= until)
            del done

    def _next(self, loop: asyncio.AbstractEventLoop, done: list[_Done], *, past_batch: bool) -> _Job | None:
        """After a call: the next one for this thread (its slot passes on), or ``None`` once the
        results so far are handed over and the slot is given back."""
        with self._lock:
            while self._backlog:
                job = self._backlog.popleft()
                if job[2].done():  # its caller gave up while it waited
                    continue
                if not past_batch:
                    return job
                self._jobs.put(job)  # another turn of some thread runs it; results go out now
                break
            else:
                if self._waiters:
                    self._released += 1  # the event loop hands it to a waiting async call
                else:
                    self._free += 1
            self._finished.extend(done)
            wake = not self._wake_pending
            self._wake_pending = True
            self._idle += 1
        done.clear()
        if wake:
            try:
                loop.call_soon_threadsafe(self._settle)
            except RuntimeError:  # the event loop is closed: nobody waits any more
                with self._lock:
                    self._finished.clear()
                    self._wake_pending = False
        return None

    def _settle(self) -> None:
        """On the event loop: deliver the results handed over, and the slots given back."""
        with self._lock:
            finished, self._finished = self._finished, deque()
            released, self._released = self._released, 0
            self._wake_pending = False
            for _ in range(released):
                self._pass_on()
        for future, value, failure in finished:
            if future.done():  # the caller was cancelled
                continue
            if failure is not None:
                future.set_exception(failure)
            else:
                future.set_result(value)

    def close(self) -> None:
        """Let every thread end once it has finished its call (a running call is not interrupted)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = len(self._threads)
        for _ in range(threads):
            self._jobs.put(_STOP)
