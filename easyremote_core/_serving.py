"""Blocking ``serve()``: an event loop of its own, stopped from any thread, one clear exception out."""

from __future__ import annotations

import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import anyio
import anyio.lowlevel

from ._backend import call_soon_threadsafe, off_loop, run

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup
else:
    BaseExceptionGroup = BaseExceptionGroup  # re-exported: the one name for 3.10 and later

T = TypeVar("T")


def run_blocking(main: Callable[[], Awaitable[T]], what: str) -> T:
    """``anyio.run(main)`` (see ``_backend.run``); an exception group from inside comes out as one exception.

    Task groups wrap what fails in them in an ``ExceptionGroup``; the caller of a blocking
    ``serve()`` should see the failure itself (an ``OSError``, an ``EasyRemoteError``), or a
    ``RuntimeError`` naming each failure when several happened at once.
    """
    try:
        return run(main)
    except BaseExceptionGroup as group:
        failure = one_exception(group, what)
        failure.__suppress_context__ = True
        raise failure  # noqa: B904 - the group is hidden on purpose; failure.__cause__ says why


def one_exception(group: BaseExceptionGroup, what: str) -> BaseException:
    """The exception that stands for ``group``: its only failure, or a ``RuntimeError`` naming them all."""
    leaves = list(_leaves(group))
    for leaf in leaves:  # Ctrl+C and exit() outrank failures
        if isinstance(leaf, (KeyboardInterrupt, SystemExit)):
            return leaf
    distinct = {(type(leaf), str(leaf)): leaf for leaf in leaves}
    if len(distinct) == 1:
        return leaves[0]
    named = "; ".join(f"{type(e).__name__}: {e}" for e in distinct.values())
    failure = RuntimeError(f"{what} failed: {named}")
    failure.__cause__ = leaves[0]
    return failure


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def in_main_thread() -> bool:
    """Signal handlers can be installed only here."""
    return threading.current_thread() is threading.main_thread()


class StopSwitch:
    """Lets any thread stop a service that runs on one event loop, and wait until it has stopped.

    The service calls :meth:`bind` in its event loop as it starts (and waits on the event
    it returns), and :meth:`release` once it has stopped. A blocking ``serve()`` runs its
    event loop inside :meth:`serving`, so that a stop asked for while it is still starting
    is kept until it has started, and :meth:`wait` returns only once ``serve()`` returns.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.Lock()
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._requested: anyio.Event | None = None
        self._serving = False
        self._pending = False  # asked for while serve() was starting
        self._stopped = threading.Event()
        self._stopped.set()

    @property
    def token(self) -> anyio.lowlevel.EventLoopToken | None:
        """The service's event loop while it runs."""
        return self._token

    def bind(self) -> anyio.Event:
        """In the service's event loop, as it starts: the event a stop request sets."""
        requested = anyio.Event()
        with self._lock:
            self._token, self._requested = anyio.lowlevel.current_token(), requested
            if not self._serving:
                self._stopped.clear()
            if self._pending:
                self._pending = False
                requested.set()
        return requested

    def release(self) -> None:
        """In the service's event loop, once it has stopped."""
        with self._lock:
            self._token = None
            if not self._serving:
                self._stopped.set()

    def request(self) -> None:
        """Ask the service to stop; callable from any thread, never blocks."""
        with self._lock:
            token, requested = self._token, self._requested
            if token is None:
                if self._serving:  # serve() is still starting: it stops once started
                    self._pending = True
                return
        assert requested is not None
        if off_loop(token):
            call_soon_threadsafe(token, requested.set)
        else:
            requested.set()

    def stop_and_wait(self, timeout: float) -> None:
        """From another thread: ask the service to stop, and wait until it has (``serve()`` has returned)."""
        with self._lock:
            token, running = self._token, self._serving or self._token is not None
        if not running:
            return
        if token is not None and not off_loop(token):
            raise RuntimeError(f"close() would block the {self.what}'s own event loop: "
                               f"there, use 'await {self.what}.stop()'")
        self.request()
        self.wait(timeout)

    def wait(self, timeout: float) -> None:
        if not self._stopped.wait(timeout):
            raise TimeoutError(f"the {self.what} did not stop within {timeout:g} s")

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Held by a blocking ``serve()`` around its event loop."""
        with self._lock:
            if self._serving:
                raise RuntimeError(f"the {self.what} is already serving")
            self._serving, self._pending = True, False
            self._stopped.clear()
        try:
            yield
        finally:
            with self._lock:
                self._serving = False
                self._stopped.set()
