"""The wheel a user installs: typed packages, the licence, and a build with no deprecation warnings."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_the_wheel_ships_py_typed_and_the_licence_and_builds_cleanly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(tmp_path),
         str(ROOT)], capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "Deprecat" not in output, [line for line in output.splitlines() if "Deprecat" in line]
    (wheel,) = tmp_path.glob("easyremote-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("easyremote", "easyremote_core", "easyremote_grpc", "easyremote_tcp", "easyremote_policies"):
        assert f"{package}/py.typed" in names
    assert any(name.endswith("dist-info/licenses/LICENSE") for name in names)
