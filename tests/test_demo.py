"""``easyremote demo``: the main job runs end to end and reports the reconnection."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", ["grpc", "tcp"])
def test_demo_restarts_the_gateway_and_every_call_succeeds(transport: str) -> None:
    result = subprocess.run([sys.executable, "-m", "easyremote", "demo", "--transport", transport, "--outage", "1"],
                            capture_output=True, text=True, timeout=100)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    for expected in ("add(2, 3)", "-> 5", "[0, 1, 4, 9, 16, 25]", "ZeroDivisionError", "node noticed the loss",
                     "node re-registered", "first call served again", "0 failed",
                     "Connection error (attempt 1)", "Reconnecting in", "Registered to VPS successfully",
                     "done: the node reconnected and re-registered by itself"):
        assert expected in out, expected
