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


_LIMIT_ARENAS = "from easyremote_core._backend import limit_malloc_arenas; print(limit_malloc_arenas())"


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
                    reason="malloc arenas are glibc's")
@pytest.mark.parametrize(("user_setting", "capped"), [("", "True"), ("4", "False")])
def test_the_cli_gateway_caps_malloc_arenas_unless_the_user_chose(user_setting: str, capped: str) -> None:
    # The CLI gateway calls it first thing: gRPC's threads otherwise spread each connection's
    # allocations over up to 8 arenas per core.
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    if user_setting:
        env["MALLOC_ARENA_MAX"] = user_setting
    out = subprocess.run([sys.executable, "-c", _LIMIT_ARENAS], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == capped
