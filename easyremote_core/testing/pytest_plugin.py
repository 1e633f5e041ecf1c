"""pytest plugin for the contract suites: ``--easyremote-transport``, ``--easyremote-retry-policy``
and ``--easyremote-health-probe``.

Load it with ``-p easyremote_core.testing.pytest_plugin``; see :mod:`easyremote_core.testing.contract`,
:mod:`easyremote_core.testing.policy_contract` and :mod:`easyremote_core.testing.probe_contract`.
"""

from __future__ import annotations

import pytest

OPTION = "--easyremote-transport"
DEST = "easyremote_transports"
POLICY_OPTION = "--easyremote-retry-policy"
POLICY_DEST = "easyremote_retry_policies"
PROBE_OPTION = "--easyremote-health-probe"
PROBE_DEST = "easyremote_health_probes"


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
    group.addoption(
        PROBE_OPTION,
        action="append",
        dest=PROBE_DEST,
        default=[],
        metavar="NAME",
        help="run the health probe contract suite against this installed probe "
        "(repeat for several; default: every installed probe)",
    )
