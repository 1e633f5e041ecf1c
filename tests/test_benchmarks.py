"""The call benchmark keeps running: its smoke mode exits 0 and prints every line. It asserts no speed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_calls.py"

EXPECTED_LINES = [
    "raw gRPC unary, sequential",
    "raw gRPC unary, 32 concurrent",
    "raw gRPC bidi-stream ping-pong, sequential",
    "raw TCP echo (anyio), sequential",
    *(
        f"{transport}, {setup}: {function}, {mode}"
        for transport in ("grpc", "tcp")
        for setup in ("3 processes", "1 process")
        for function in ("echo (sync)", "aecho (async)")
        for mode in ("sequential", "32 concurrent")
    ),
    "Summary",
    "machine: ",
    "raw gRPC unary round trip",
    *(f"{transport}: sequential {function}" for transport in ("grpc", "tcp") for function in ("echo", "aecho")),
    *(f"{transport}: 32 concurrent {function}" for transport in ("grpc", "tcp") for function in ("echo", "aecho")),
]


@pytest.mark.timeout(90)
def test_smoke_run_prints_every_line() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--smoke", "--transports", "grpc,tcp"],
        capture_output=True, text=True, timeout=80, cwd=BENCHMARK.parents[1],
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    printed = run.stdout.splitlines()
    missing = [label for label in EXPECTED_LINES if not any(text.startswith(label) for text in printed)]
    assert not missing, f"lines not printed: {missing}\nstdout:\n{run.stdout}"
    assert "calls/s" in run.stdout
