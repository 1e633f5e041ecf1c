"""pytest plugin for the transport contract suite: the ``--easyremote-transport`` option.

Load it with ``-p easyremote_core.testing.pytest_plugin``; see :mod:`easyremote_core.testing.contract`.
"""

from __future__ import annotations

import pytest

OPTION = "--easyremote-transport"
DEST = "easyremote_transports"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("easyremote", "EasyRemote transport contract suite")
    group.addoption(
        OPTION,
        action="append",
        dest=DEST,
        default=[],
        metavar="NAME",
        help="run the transport contract suite against this installed transport "
        "(repeat for several; default: every installed transport)",
    )
