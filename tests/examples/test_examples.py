"""The examples run as written: the guide's three-terminal reconnection demo and the small ones.

Each example runs as a real subprocess against a real gateway (examples/vps_server.py) on a
loopback port; the gateway is killed with SIGKILL and restarted on the same port.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from easyremote_core.testing.processes import ManagedProcess, free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REGISTERED = "Registered to VPS successfully"



class Example(ManagedProcess):
    """``python examples/<script> ARGS`` as a managed subprocess."""

    def __init__(self, script: str, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(env, name=Path(script).stem, cwd=EXAMPLES.parent)
        self.script = script
        self.args = args

    def argv(self) -> list[str]:
        return [sys.executable, "-u", str(EXAMPLES / self.script), *self.args]


class VpsServer(Example):
    """examples/vps_server.py on a fixed loopback port, so that it comes back on the same one."""

    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        super().__init__("vps_server.py", str(self.port), env={"EASYREMOTE_HOST": "127.0.0.1"})

    def start(self) -> VpsServer:
        super().start()
        self.wait_for_line(f"EasyRemote gateway listening on {self.address}", timeout=20)
        return self


@pytest.fixture
def gateway() -> Iterator[VpsServer]:
    with VpsServer() as server:
        yield server.start()


@pytest.fixture
def node(gateway: VpsServer) -> Iterator[Example]:
    with Example("improved_reconnect_demo.py", gateway.address, env={"EASYREMOTE_FAST": "1"}) as demo:
        demo.start()
        demo.wait_for_line(REGISTERED, timeout=20)
        demo.wait_for_line("connection healthy: True", timeout=10)
        yield demo


def assert_in_order(lines: Sequence[str], needles: Sequence[str | re.Pattern[str]]) -> None:
    """Each needle (text, or a pattern searched for) occurs in ``lines`` after the previous one."""
    position = 0
    for needle in needles:
        for index in range(position, len(lines)):
            line = lines[index]
            if (needle.search(line) if isinstance(needle, re.Pattern) else needle in line):
                position = index + 1
                break
        else:
            pytest.fail(f"{needle!r} not found after line {position} of:\n" + "\n".join(lines))


def diagnostics(node: Example, transition: str) -> dict[str, str]:
    """The guide's diagnostics the demo node printed after its last ``transition`` (e.g. '-> ready')."""
    node.wait_for_line(transition, timeout=30)
    lines = node.lines()
    start = max(i for i, line in enumerate(lines) if transition in line)
    changes = sum(line.startswith("[") and " state " in line for line in lines[:start + 1])
    node.wait_for_line("execution tasks:", count=changes, timeout=10)  # the rest of its block
    values = {}
    for line in node.lines()[start + 1:start + 6]:
        key, _, value = line.strip().partition(":")
        values[key] = value.strip()
    return values


def run_to_end(process: Example, timeout: float = 30) -> list[str]:
    process.start()
    code = process.wait(timeout)
    assert code == 0, process.log_text()
    return process.lines()


# -- the guide's three-terminal demo -----------------------------------------------------------


@pytest.mark.timeout(90)
def test_node_reconnects_after_the_gateway_is_killed_and_restarted(gateway: VpsServer, node: Example) -> None:
    ready = diagnostics(node, "connecting -> ready")
    assert (ready["connection healthy"], ready["reconnect count"]) == ("True", "0")
    assert ready["active executions"] == ready["execution tasks"] == "0"
    before = len(node.lines())

    gateway.kill()
    node.wait_for_line("Reconnecting in", timeout=20)
    assert diagnostics(node, "ready -> reconnecting")["connection healthy"] == "False"

    gateway.start()
    node.wait_for_line(REGISTERED, count=2, timeout=30)
    after = diagnostics(node, "reconnecting -> ready")

    # The guide's log lines, at the guide's levels, in the guide's order.
    assert_in_order(node.lines()[before:], [
        re.compile(r"ERROR .*Connection error \(attempt 1\): "),
        re.compile(r"INFO .*Reconnecting in [\d.]+ seconds\.\.\. \(attempt 1/10\)"),
        re.compile(r"INFO .*Attempting to reconnect\.\.\."),
        re.compile(r"INFO .*gRPC channel to VPS established successfully"),
        re.compile(r"INFO .*" + REGISTERED),
    ])
    assert after["connection healthy"] == "True"
    assert int(after["reconnect count"]) >= 1
    assert after["active executions"] == after["execution tasks"] == "0"

    # The functions work again, through the restarted gateway.
    lines = run_to_end(Example("async_client.py", gateway.address))
    assert "add(2, 3) = 5" in lines
    assert "countdown(3) = [3, 2, 1]" in lines

    assert node.terminate() == 0  # SIGTERM: the node stops cleanly
    assert "Received SIGTERM, stopping node my-robust-node" in node.log_text()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["argv", "stdin"])
def test_single_test_calls_every_function_once(gateway: VpsServer, node: Example, how: str) -> None:
    args = ("1",) if how == "argv" else ()
    client = Example("test_reconnect_client.py", *args, "--gateway", gateway.address)
    with client:
        client.start()
        if how == "stdin":
            client.wait_for_line("1) single test  2) continuous test")
            client.write_line("1")
        assert client.wait(30) == 0, client.log_text()
        lines = client.lines()
    assert_in_order(lines, [
        "single test add(2, 3) = 5 OK", "single test slow_square(4) = 16 OK",
        "single test countdown(3) = [3, 2, 1] OK", "Single test passed",
    ])


@pytest.mark.timeout(60)
def test_continuous_test_stops_after_the_rounds_asked_for(gateway: VpsServer, node: Example) -> None:
    client = Example("test_reconnect_client.py", "2", "--interval", "0.1", "--rounds", "2",
                     env={"EASYREMOTE_GATEWAY": gateway.address})
    with client:
        lines = run_to_end(client)
    # (startswith: the client's own log line, written from its thread, may land right after the text)
    assert any(line.startswith("Continuous test: calling every 0.1 s, Ctrl+C to stop") for line in lines), lines
    assert sum(" OK" in line for line in lines) == 6
    assert lines[-1] == "Continuous test stopped: 2/2 rounds fully successful"


@pytest.mark.timeout(120)
def test_continuous_test_reports_the_outage_and_the_recovery(gateway: VpsServer, node: Example) -> None:
    client = Example("test_reconnect_client.py", "2", "--gateway", gateway.address,
                     env={"EASYREMOTE_INTERVAL": "0.2", "EASYREMOTE_TIMEOUT": "1"})
    with client:
        client.start()
        client.wait_for_line("round 1 countdown(3) = [3, 2, 1] OK", timeout=30)
        assert not any("FAILED" in line for line in client.lines())
        node_before = len(node.lines())

        gateway.kill()  # SIGKILL: no goodbye to anyone
        first_failure = client.wait_for_line("FAILED", timeout=30)
        node.wait_for_line("Reconnecting in", timeout=20)
        gateway.start()
        node.wait_for_line(REGISTERED, count=2, timeout=30)
        good_rounds = sum("countdown(3) = [3, 2, 1] OK" in line for line in client.lines())
        client.wait_for_line("countdown(3) = [3, 2, 1] OK", count=good_rounds + 2, timeout=30)

        os.kill(client.pid, signal.SIGINT)  # Ctrl+C
        client.wait_for_line("Continuous test stopped", timeout=20)
        assert client.wait(20) == 0
        lines = client.lines()

    calls = [line for line in lines if " round " in line]
    assert all(re.match(r"\[\d\d:\d\d:\d\d\.\d{3}\] round \d+ ", line) for line in calls), calls
    assert re.search(r"FAILED: \w+Error: ", first_failure)
    # Failures while the gateway was down, then whole rounds that succeed again.
    failed_at = lines.index(first_failure)
    assert_in_order(lines[failed_at:], ["add(2, 3) = 5 OK", "slow_square(4) = 16 OK", "countdown(3) = [3, 2, 1] OK"])
    assert not any("Traceback" in line for line in lines)
    assert_in_order(node.lines()[node_before:], [
        "Connection error (attempt 1)", "Reconnecting in", "Attempting to reconnect...",
        "channel to VPS established successfully", REGISTERED,
    ])


# -- the small examples ------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("script", "expected"), [
    ("remote_decorator.py", ["add(2, 3) = 5", "slow_square(1..3) = [1, 4, 9]", "countdown(3) = [3, 2, 1]"]),
    ("async_client.py", ["node my-robust-node (ready) serves add, countdown, slow_square", "add(2, 3) = 5",
                         "slow_square(0..9) = [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]", "countdown(3) = [3, 2, 1]",
                         "no_such_function failed as expected: "]),
    ("streaming.py", ["read_lines: line 0", "read_lines: line 1", "read_lines: line 2", "ticks: [0, 1, 2, 3, 4]"]),
])
def test_small_example_runs_against_a_gateway(gateway: VpsServer, node: Example, script: str,
                                              expected: list[str]) -> None:
    with Example(script, gateway.address) as example:
        lines = run_to_end(example)
    assert_in_order(lines, expected)
    assert not any("Traceback" in line for line in lines)


@pytest.mark.timeout(60)
def test_examples_take_the_gateway_from_the_environment(gateway: VpsServer, node: Example) -> None:
    with Example("async_client.py", env={"EASYREMOTE_GATEWAY": gateway.address}) as example:
        assert "add(2, 3) = 5" in run_to_end(example)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_reads_like_the_style_guide(script: str) -> None:
    source = (EXAMPLES / script).read_text()
    assert 40 <= len(source.splitlines()) <= 80
    assert 'if __name__ == "__main__":' in source
    assert "logging.basicConfig(level=logging.INFO" in source
