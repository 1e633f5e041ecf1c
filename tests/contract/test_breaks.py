"""The contract suite catches what it claims to: each deliberate break of the tcp transport
(``breaks.py``) makes it fail, while the unbroken tcp transport passes the same run.

Each break runs the whole suite in its own pytest process, stopping at the first failure
(``-x``); the processes run side by side.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .breaks import BREAKS

pytestmark = [pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "writing-a-transport.md"
SUITE = """
from tests.contract import breaks
from easyremote_core.testing import contract

breaks.register()


class TestUnderBreak(contract.TestTransportContract):
    pass
"""


def run_suite(directory: Path, transport: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "easyremote_core.testing.pytest_plugin", "-p", "no:cacheprovider",
         "-p", "no:randomly", "--easyremote-transport", transport, "-o", "timeout=40", "--rootdir", str(directory),
         *extra, str(directory / "test_under_break.py")],
        capture_output=True, text=True, timeout=200, cwd=directory,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )


def test_every_break_fails_the_suite_and_tcp_passes_it(tmp_path: Path) -> None:
    (tmp_path / "test_under_break.py").write_text(SUITE)
    names = [f"broken-{kind}" for kind in BREAKS]
    with ThreadPoolExecutor(max_workers=len(names) + 1) as pool:
        control = pool.submit(run_suite, tmp_path, "tcp")
        runs = dict(zip(names, pool.map(lambda name: run_suite(tmp_path, name, "-x"), names), strict=True))
    result = control.result()
    # The count docs/writing-a-transport.md gives for tcp, all passed.
    documented = re.search(r"For the TCP transport this runs (\d+) tests", GUIDE.read_text())
    assert documented is not None
    assert result.returncode == 0 and f"{documented[1]} passed" in result.stdout, result.stdout[-3000:]
    missed = {name: BREAKS[name.removeprefix("broken-")] for name, run in runs.items()
              if run.returncode != 1 or " failed" not in run.stdout}
    assert not missed, f"the contract suite let these breaks through: {missed}\n" + "\n".join(
        runs[name].stdout[-1500:] for name in missed)
