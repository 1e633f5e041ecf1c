"""Shared fixtures: every async test runs on asyncio unless it asks for more backends."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """asyncio; modules that also run on trio parametrize their own ``anyio_backend``."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _easyremote_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="easyremote")

