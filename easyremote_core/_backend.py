"""What the core needs from the event loop that anyio does not offer, done per backend (asyncio, trio)."""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import sniffio

from ._errors import ConfigurationError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long ``HostTask.aclose`` waits for a cancelled host task to end.
CLOSE_TIMEOUT = 30.0


class HostTask:
    """Runs ``func()`` in a task that belongs to none of the caller's task groups.

    A resource whose ``start()`` and ``aclose()`` may be called from different tasks, with
    task groups opened and closed in between, cannot enter a task group in the caller's
    task: exiting it from anywhere else raises "Attempted to exit a cancel scope that isn't
    the current task's current cancel scope". It runs its background work in a host task
    instead, and stays structured because it always waits for that task to end
    (:meth:`wait`, or :meth:`aclose` which cancels it first). anyio cannot spawn such a
    task, so :meth:`spawn` does it per backend: on asyncio with ``loop.create_task`` (the
    task is kept referenced here until it ends), on trio with
    ``trio.lowlevel.spawn_system_task``. ``func`` should catch what it can handle; any
    other exception is kept and raised by :meth:`wait` or :meth:`aclose`.
    """

    def __init__(self, func: Callable[[], Awaitable[Any]], name: str) -> None:
        self.name = name
        self._func = func
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._failure: Exception | None = None
        self._task: object = None  # the asyncio task, referenced until it ends

    @classmethod
    def spawn(cls, func: Callable[[], Awaitable[Any]], *, name: str) -> HostTask:
        """Start ``func()`` in a host task of the running event loop."""
        host = cls(func, name)
        library = sniffio.current_async_library()
        if library == "trio":
            import trio

            trio.lowlevel.spawn_system_task(host._run, name=name)
        elif library == "asyncio":
            host._task = asyncio.get_running_loop().create_task(host._run(), name=name)
        else:
            raise RuntimeError(f"HostTask cannot run under {library}")
        return host

    async def _run(self) -> None:
        try:
            with self._scope:
                await self._func()
        except Exception as exc:  # raised by wait() or aclose(); a host task must not raise
            self._failure = exc
        finally:
            self._done.set()
            self._task = None

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    async def wait(self) -> None:
        """Wait until the task has ended; raise what ``func`` raised, if anything but a cancellation."""
        await self._done.wait()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    async def aclose(self) -> None:
        """Cancel the task and wait (shielded, up to ``CLOSE_TIMEOUT``) for it to end.

        Callable from any task of its event loop; raises what :meth:`wait` raises.
        """
        self._scope.cancel()
        with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
            await self.wait()
            return
        logger.warning("%s did not end within %g s of being cancelled", self.name, CLOSE_TIMEOUT)


#: ``asyncio`` runs EasyRemote's own event loops on asyncio's loop even when uvloop is installed.
EVENT_LOOP_ENV = "EASYREMOTE_EVENT_LOOP"


def event_loop() -> str:
    """The loop :func:`run` starts: ``uvloop`` when it is installed, unless
    ``EASYREMOTE_EVENT_LOOP=asyncio``; ``asyncio`` otherwise."""
    choice = os.environ.get(EVENT_LOOP_ENV, "").strip().lower()
    if choice not in ("", "asyncio", "uvloop"):
        raise ConfigurationError(f"{EVENT_LOOP_ENV}={choice!r}: must be asyncio or uvloop")
    installed = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not installed:
        raise ConfigurationError(f"{EVENT_LOOP_ENV}=uvloop, but uvloop is not installed (pip install uvloop)")
    return "uvloop" if installed and choice != "asyncio" else "asyncio"


def run(main: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``anyio.run`` for the event loops EasyRemote starts itself (the CLI, blocking ``serve()``,
    the sync ``Client``'s thread), on :func:`event_loop`: uvloop is a faster loop, fewer
    microseconds per frame."""
    use_uvloop = event_loop() == "uvloop"
    return anyio.run(main, *args, backend="asyncio", backend_options={"use_uvloop": use_uvloop})


#: glibc's ``mallopt`` parameter for the number of malloc arenas.
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for a process EasyRemote owns (the CLI gateway); ``True`` if done.

    glibc gives each thread that allocates its own arena, up to 8 per core, and gRPC's threads
    allocate a little per connection in each: a gateway's memory per idle node grows by ~2 KiB
    of fragments that two arenas keep together. ``MALLOC_ARENA_MAX`` set by the user wins;
    elsewhere than glibc this does nothing.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  # glibc, not musl: mallopt takes M_ARENA_MAX
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


def clock() -> Callable[[], float]:
    """The running event loop's clock, the one ``anyio.current_time()`` reads, as a function for
    a caller that reads it often (once per frame): ``anyio.current_time()`` looks the backend up
    on every call."""
    if sniffio.current_async_library() == "asyncio":
        return asyncio.get_running_loop().time
    return anyio.current_time


def sleeper() -> Callable[[float], Awaitable[None]]:
    """The running event loop's own ``sleep(seconds)``: ``anyio.sleep`` on asyncio is
    ``asyncio.sleep`` inside two coroutines more, which a task asleep keeps alive (a gateway
    has a heartbeat probe asleep per link)."""
    if sniffio.current_async_library() == "asyncio":
        return asyncio.sleep
    return anyio.sleep


class TaskSet:
    """Short tasks started at once, owned by the task that runs :meth:`own`: when its work ends,
    those still running are cancelled and waited for. On asyncio they are the loop's own tasks,
    made with ``create_task``, because an anyio task group's ``start_soon`` costs several times
    as much and a node starts one task per call; on trio they run in a task group of the set.

    A task that raises (not a cancellation) has ``on_error`` called with the exception: the
    owner decides what to report and what ends.
    """

    def __init__(self, on_error: Callable[[BaseException], None]) -> None:
        self._on_error = on_error
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    async def own(self, func: Callable[[], Awaitable[Any]]) -> None:
        """Run ``func()``, starting tasks in this set meanwhile; then end those still running."""
        if sniffio.current_async_library() != "asyncio":
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                try:
                    await func()
                finally:
                    self._task_group = None
                    tg.cancel_scope.cancel()
            return
        self._loop = asyncio.get_running_loop()
        try:
            await func()
        finally:
            self._loop = None
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                with anyio.CancelScope(shield=True):
                    await asyncio.wait(tasks)

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        loop = self._loop
        if loop is not None:
            task = loop.create_task(func(*args))
            self._tasks.add(task)
            task.add_done_callback(self._finished)
            return
        assert self._task_group is not None, "the task set has no owner"
        self._task_group.start_soon(self._guarded, func, *args)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._on_error(exc)

    async def _guarded(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        try:
            await func(*args)
        except Exception as exc:
            self._on_error(exc)


def call_soon_threadsafe(token: anyio.lowlevel.EventLoopToken, func: Callable[[], object]) -> bool:
    """Run ``func()`` soon on the event loop ``token`` names, from any thread, without waiting for it.

    ``anyio.from_thread.run_sync`` waits for the loop, and forever for a loop that has
    stopped running but is not closed yet; this never blocks. Returns ``False`` when the
    loop has already finished, so ``func`` will not run.
    """
    native = token.native_token
    try:
        if isinstance(native, asyncio.AbstractEventLoop):
            def in_loop() -> None:  # as anyio's own callbacks do: sniffio cannot tell outside a task
                reset = sniffio.current_async_library_cvar.set("asyncio")
                try:
                    func()
                finally:
                    sniffio.current_async_library_cvar.reset(reset)

            native.call_soon_threadsafe(in_loop)
        else:  # a trio.lowlevel.TrioToken
            native.run_sync_soon(func)  # type: ignore[attr-defined]
    except RuntimeError:  # asyncio: "Event loop is closed"; trio: RunFinishedError
        return False
    return True


def off_loop(token: anyio.lowlevel.EventLoopToken) -> bool:
    """Whether the caller runs outside the event loop that ``token`` names (another thread or loop)."""
    try:
        return anyio.lowlevel.current_token() != token
    except RuntimeError:  # no event loop in this thread
        return True
