"""Half a minute of the chaos soak (benchmarks/chaos_soak.py) on each transport meets every target: nothing
hung, nothing run twice, no idempotent call lost, none falsely reported failed, no failure while a gateway was up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHAOS_SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "chaos_soak.py"
#: Missed today in nearly every run, on both transports (benchmarks/README.md, chaos_soak.py).
KNOWN_MISS = ("a gateway fails a non-idempotent call with NodeLostError when its node's link is reset before its "
              "heartbeat timeout (a black hole healed), though the node's same run is back within a second and runs it")


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.xfail(reason=KNOWN_MISS, strict=False)
@pytest.mark.parametrize("transport", ["grpc", "tcp"])
def test_half_a_minute_of_chaos_meets_every_target(transport: str, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(CHAOS_SOAK), "--minutes", "0.5", "--seed", "11", "--transport", transport,
         "--log-dir", str(tmp_path), "--check"],
        capture_output=True, text=True, timeout=230, cwd=CHAOS_SOAK.parents[1],
    )
    misses = (tmp_path / "misses.txt").read_text() if (tmp_path / "misses.txt").exists() else ""
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr[-4000:]}\nmisses:\n{misses[:6000]}"
