"""``serve()`` shows EasyRemote's INFO lines to a program that configured no logging, and
leaves a program that configured logging in full control. Fresh interpreters, since pytest
configures logging itself."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.timeout(60)]

SCRIPT = textwrap.dedent("""
    import logging, sys
    {setup}
    from easyremote_core._logs import console_logging

    with console_logging(), console_logging():  # nested holders share one handler
        logging.getLogger("easyremote.node").info("inside serve")
    logging.getLogger("easyremote.node").info("after serve")
    logging.getLogger("easyremote.node").warning("a warning after serve")
    print(len(logging.getLogger("easyremote").handlers), logging.getLogger("easyremote").level)
""")


def run(setup: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(setup=setup)], capture_output=True, text=True,
                          timeout=30, check=True)


def test_no_logging_configured_shows_info_lines_while_serving() -> None:
    done = run("")
    assert "INFO    easyremote.node: inside serve" in done.stderr
    assert "after serve" not in done.stderr.replace("a warning after serve", "")
    assert "a warning after serve" in done.stderr  # Python's own last resort, as before
    assert done.stdout.split() == ["0", "0"]  # nothing is left behind


def test_a_program_that_configured_logging_keeps_control() -> None:
    done = run("logging.basicConfig(level=logging.WARNING, format='%(levelname)s|%(message)s')")
    assert "inside serve" not in done.stderr
    assert done.stderr.splitlines() == ["WARNING|a warning after serve"]
