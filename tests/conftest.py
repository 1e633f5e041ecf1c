"""Shared fixtures: every async test runs on asyncio unless it asks for more backends."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest


@pytest.fixture
def anyio_backend() -> str:
    """asyncio; modules that also run on trio parametrize their own ``anyio_backend``."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _easyremote_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="easyremote")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every async test is cancelled on its own event loop a little before pytest-timeout would
    end its worker: it fails with a TimeoutError at the await it was stuck in, and its fixtures
    are torn down as after any other failure."""
    default = float(config.getini("timeout") or 0)
    for item in items:
        function = getattr(item, "obj", None)
        if not isinstance(item, pytest.Function) or not inspect.iscoroutinefunction(function):
            continue
        marker = item.get_closest_marker("timeout")
        limit = float(marker.args[0]) if marker and marker.args else default
        if limit > 0:
            item.obj = _bounded(function, limit * 0.9)


def _bounded(test: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    """The test, cancelled after ``seconds`` of wall-clock time (tests on a virtual clock too)."""

    @functools.wraps(test)
    async def bounded(*args: Any, **kwargs: Any) -> Any:
        token = anyio.lowlevel.current_token()
        with anyio.CancelScope() as scope:
            timer = threading.Timer(seconds, _cancel_from_thread, (scope, token))
            timer.daemon = True  # a loop stuck in a blocking call: pytest-timeout ends the worker
            timer.start()
            try:
                return await test(*args, **kwargs)
            finally:
                timer.cancel()
        raise TimeoutError(f"the test did not end within {seconds:.0f} s; the traceback shows where it waited")

    return bounded


def _cancel_from_thread(scope: anyio.CancelScope, token: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
        anyio.from_thread.run_sync(scope.cancel, token=token)
