"""pytest plugin for the contract suites: ``--easyremote-transport`` and ``--easyremote-retry-policy``.

Load it with ``-p easyremote_core.testing.pytest_plugin``; see :mod:`easyremote_core.testing.contract`
and :mod:`easyremote_core.testing.policy_contract`.
"""

from __future__ import annotations

import pytest

OPTION = "--easyremote-transport"
DEST = "easyremote_transports"
POLICY_OPTION = "--easyremote-retry-policy"
POLICY_DEST = "easyremote_retry_policies"


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
    group.addoption(
        POLICY_OPTION,
        action="append",
        dest=POLICY_DEST,
        default=[],
        metavar="NAME",
        help="run the retry policy contract suite against this installed policy "
        "(repeat for several; default: every installed policy)",
    )
