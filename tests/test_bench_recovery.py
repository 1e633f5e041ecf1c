"""The recovery benchmark keeps running: its smoke mode exits 0 and prints every line. It asserts no speed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_recovery.py"

EXPECTED_LINES = [
    "EasyRemote recovery benchmark (smoke, transport grpc)",
    "(a) gateway SIGKILLed -> node notices",
    "(b) gateway hung (SIGSTOP) -> node notices",
    "(c) link black-holed (chaos proxy) -> node notices",
    "(d) node SIGKILLed in a 5 s call -> NodeLostError",
    "(i)  1 s outage: node registered again",
    "(ii) 1 s outage: first call served by the returned node",
    "(i)  2 s outage: node registered again",
    "(ii) 2 s outage: first call served by the returned node",
    "restart 1: re-registered median",
    "(a) its link notices",
    "(b) its link registered again, from 'gateway listening again'",
    "    the node left 'ready'",
    "Summary",
    "machine: ",
    "1a gateway killed: node notices",
    "1b gateway hung: node notices",
    "1c link black-holed: node notices",
    "1d node killed mid-call: caller fails",
    "2i  2 s outage: node registered again",
    "2ii 2 s outage: first call served",
    "3   20 nodes: each re-registered",
    "3   20 nodes: connection attempts per node",
    "4a two gateways, one killed: its link notices",
    "4b two gateways, one restarted: its link back",
    "4  two gateways: node left ready / calls failed",
]


@pytest.mark.timeout(120)
def test_smoke_run_prints_every_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(BENCHMARK), "--smoke", "--log-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=110, cwd=BENCHMARK.parents[1],
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    printed = run.stdout.splitlines()
    missing = [label for label in EXPECTED_LINES if not any(text.startswith(label) for text in printed)]
    assert not missing, f"lines not printed: {missing}\nstdout:\n{run.stdout}"
    assert "grpcio" in run.stdout
