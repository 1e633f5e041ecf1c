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


def test_a_long_line_is_cut_and_says_how_long_it_was(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from easyremote_core._logs import MAX_LINE, capped

    logger = capped(logging.getLogger("easyremote.test-cap"))
    with caplog.at_level(logging.INFO, logger="easyremote.test-cap"):
        logger.info("names: %s", "x" * 100_000)
        logger.info("short %s", "line")
    long, short = (record.getMessage() for record in caplog.records)
    assert len(long) <= MAX_LINE and long.endswith("[100007 characters]")
    assert short == "short line"


def test_what_peers_cause_is_logged_once_per_host_and_reason_per_period(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from easyremote_core._logs import Quieter

    now = [0.0]
    quiet = Quieter(logging.getLogger("easyremote.test-quiet"), period=10, max_keys=3, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="easyremote.test-quiet"):
        for port in range(1000, 1100):  # 100 connections from one host, one reason
            quiet.log(logging.WARNING, f"10.0.0.1:{port}", "token", "Refused %s", f"10.0.0.1:{port}")
        quiet.log(logging.WARNING, "10.0.0.1:2000", "garbage", "Bad frame")  # another reason
        quiet.log(logging.WARNING, "[::1]:2000", "token", "Refused v6")  # another host
        now[0] = 10.5
        quiet.log(logging.WARNING, "10.0.0.1:3000", "token", "Refused %s", "again")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["Refused 10.0.0.1:1000", "Bad frame", "Refused v6",
                        "Refused again (and 99 more like it from 10.0.0.1 in the last 10 s)"]
    for i in range(50):  # many hosts: at most max_keys are remembered
        quiet.log(logging.WARNING, f"10.1.0.{i}:1", "token", "x")
    assert len(quiet._seen) <= 3
