"""The event loops EasyRemote starts itself: asyncio, on uvloop when it is installed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)


_WHICH_LOOP = """
import asyncio
from easyremote_core._backend import run

async def main():
    print(type(asyncio.get_running_loop()).__module__)

run(main)
"""


@pytest.mark.parametrize(("setting", "module"), [("", "uvloop"), ("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_easyremote_s_own_event_loops_run_on_uvloop_when_installed(setting: str, module: str) -> None:
    # The CLI, blocking serve() and the sync Client start their loops through _backend.run.
    env = {**os.environ, "EASYREMOTE_EVENT_LOOP": setting}
    out = subprocess.run([sys.executable, "-c", _WHICH_LOOP], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().split(".")[0] == module


def test_a_bad_event_loop_setting_names_itself() -> None:
    env = {**os.environ, "EASYREMOTE_EVENT_LOOP": "tokio"}
    out = subprocess.run([sys.executable, "-c", _WHICH_LOOP], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "EASYREMOTE_EVENT_LOOP='tokio': must be asyncio or uvloop" in out.stderr
