"""``easyremote demo``: the main job runs end to end and reports the reconnection."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

#: A log line of the report: indented, timed, and saying whose it is.
LOG_LINE = re.compile(r"^    \d\d:\d\d:\d\d\.\d{3} (?P<peer>\S+) +(?P<level>[A-Z]+) +(?P<message>.*)$")


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
                     "reconnect_count=1", "reconnect_attempts=", "client: 1 reconnection(s)",
                     "done: the node reconnected and re-registered by itself"):
        assert expected in out, expected

    logged = [match for line in result.stdout.splitlines() if (match := LOG_LINE.match(line))]
    by_peer: dict[str, list[str]] = {}
    for match in logged:
        by_peer.setdefault(match["peer"], []).append(match["message"])
    assert {"node", "client"} <= set(by_peer), out
    assert "Registered to VPS successfully" in by_peer["node"]
    assert "Registered to VPS successfully" not in by_peer["client"]
    for peer in ("node", "client"):
        messages = by_peer[peer]
        errors = [m for m in messages if m.startswith("Connection error")]
        # one outage: its loss is reported once per peer, and no attempt's error twice
        assert sum(m.startswith("Connection error (attempt 1)") for m in errors) == 1, (peer, out)
        assert len(errors) == len(set(errors)), (peer, out)
        assert all(a != b for a, b in zip(messages, messages[1:], strict=False)), (peer, out)  # no line repeated
