"""The call benchmark keeps running: its smoke mode exits 0 and prints every line. It asserts no speed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_calls.py"

CONTENDERS = ["EasyRemote grpc, async def", "EasyRemote grpc, def", "EasyRemote tcp, async def", "EasyRemote tcp, def",
              "raw gRPC unary", "raw gRPC bidi stream", "raw gRPC bidi through a relay", "NATS request/reply"]
EXPECTED_LINES = [
    *(f"{name}, sequential p50" for name in CONTENDERS),
    *(f"{name}, 32 callers" for name in CONTENDERS),
    "CPU per call at 32 callers",
    *(f"{name}, 1 KB" for name in ("raw gRPC unary", "EasyRemote grpc", "EasyRemote tcp", "NATS")),
    *(f"{name}, 8 callers" for name in ("EasyRemote grpc", "EasyRemote tcp", "NATS")),
    *(f"EasyRemote {transport}, {count} node(s)" for transport in ("grpc", "tcp") for count in (1, 3)),
    "EasyRemote grpc gateway", "EasyRemote tcp gateway", "raw grpc.aio server, one idle bidi stream each",
    "nats-server",
    "Summary (medians of 2 interleaved rounds)",
    "machine: ",
    *(f"{transport}: {what}" for transport in ("grpc", "tcp")
      for what in ("32 callers (async) ÷ NATS", "sequential p50 ÷ NATS", "def ÷ async def, 32 callers",
                   "1 MB payload MB/s ÷ raw gRPC unary", "3 nodes ÷ 1 node", "CPU per call, 3 processes",
                   "gateway memory per idle node")),
    "grpc: sequential p50 ÷ raw gRPC unary",
    "floor: raw gRPC bidi through a relay",
]


@pytest.mark.timeout(150)
def test_smoke_run_prints_every_line() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCHMARK), "--smoke", "--transports", "grpc,tcp"],
        capture_output=True, text=True, timeout=140, cwd=BENCHMARK.parents[1],
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    printed = run.stdout.splitlines()
    missing = [label for label in EXPECTED_LINES if not any(text.startswith(label) for text in printed)]
    assert not missing, f"lines not printed: {missing}\nstdout:\n{run.stdout}"
    assert "not measured" not in run.stdout, "NATS (the bench extra) is installed with the test extra"


CHAOS_SOAK = BENCHMARK.parent / "chaos_soak.py"
CHAOS_SOAK_LINES = [
    "EasyRemote chaos soak: transport grpc, 0.3 min, seed 3",
    "settings: ",
    "figure ",
    "calls made ",
    "succeeded ",
    "failed: non-idempotent, node killed meanwhile (honest) ",
    "hung (no answer within ",
    "ran twice (a token twice in the node logs) ",
    "lost idempotent calls (failed) ",
    "falsely reported failed, node survived ",
    "failed while at least one gateway was up ",
    "succeeded without one logged run ",
    "fault: gateway SIGKILLed, restarted ",
    "fault: gateway SIGSTOPped, SIGCONTed ",
    "fault: node SIGKILLed, restarted ",
    "fault: node SIGSTOPped, SIGCONTed ",
    "fault: node-gateway link black-holed < ",
    "fault: node-gateway link black-holed > ",
    "fault: both gateways down at once ",
]


@pytest.mark.timeout(150)
def test_chaos_soak_short_run_prints_every_line(tmp_path: Path) -> None:
    """A short soak (no --check: its figures after 18 s of faults are not the point) prints its whole table."""
    run = subprocess.run(
        [sys.executable, str(CHAOS_SOAK), "--minutes", "0.3", "--seed", "3", "--log-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=140, cwd=BENCHMARK.parents[1],
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    printed = run.stdout.splitlines()
    missing = [label for label in CHAOS_SOAK_LINES if not any(text.startswith(label) for text in printed)]
    assert not missing, f"lines not printed: {missing}\nstdout:\n{run.stdout}"
