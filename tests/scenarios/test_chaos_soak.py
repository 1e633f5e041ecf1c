"""Half a minute of the chaos soak (benchmarks/chaos_soak.py) on each transport meets every target: nothing
hung, nothing run twice, no idempotent call lost, none falsely reported failed, no failure while a gateway was up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHAOS_SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "chaos_soak.py"
#: The two misses the soak finds today, in the core (benchmarks/README.md, "What the soak finds today"):
#: a healed black hole's reset fails the calls its node still runs; a call sent to a gateway that has
#: just frozen is answered "may or may not have run" by the other gateway.
KNOWN_MISSES = ("NodeLostError: node soak-node-", "ConnectionLostError: call ")
KNOWN_KINDS = ("falsely reported failed, its node survived: ", "failed while a gateway was up: ")


def _unknown(misses: str) -> list[str]:
    """The misses that are not one of the known two."""
    heads = [line for line in misses.splitlines() if line and not line.startswith(" ")]
    return [line for line in heads
            if not (line.startswith(KNOWN_KINDS) and any(known in line for known in KNOWN_MISSES)
                    and ("broke:" in line or "was lost with the link to the gateway" in line))]


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("transport", ["grpc", "tcp"])
def test_half_a_minute_of_chaos_meets_every_target(transport: str, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(CHAOS_SOAK), "--minutes", "0.5", "--seed", "11", "--transport", transport,
         "--log-dir", str(tmp_path), "--check"],
        capture_output=True, text=True, timeout=230, cwd=CHAOS_SOAK.parents[1],
    )
    report = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr[-4000:]}"
    assert run.returncode in (0, 1), report
    assert "hung (no answer within" in run.stdout, report
    if run.returncode == 1:
        misses = (tmp_path / "misses.txt").read_text()
        unknown = _unknown(misses)
        assert not unknown, f"{report}\nmisses:\n{misses[:8000]}"
        pytest.xfail("only the misses known in the core: a healed black hole's reset fails calls its node still "
                     "runs; a call sent to a gateway that has just frozen is answered 'may or may not have run'")
