"""pytest plugin for the contract suites: ``--easyremote-transport``, ``--easyremote-retry-policy``
and ``--easyremote-health-probe``.

Load it with ``-p easyremote_core.testing.pytest_plugin``; see :mod:`easyremote_core.testing.contract`,
:mod:`easyremote_core.testing.policy_contract` and :mod:`easyremote_core.testing.probe_contract`.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def selected_names(config: pytest.Config, kind: str, dest: str, fixed: Sequence[str] | None) -> list[str]:
    """The installed plugins of one ``kind`` a contract suite runs against: ``fixed``, else the
    command line's (``dest``), else every installed one; an unknown name stops the run."""
    from easyremote_core import get_plugin_manager

    installed = get_plugin_manager().entries(kind)
    names = list(fixed or config.getoption(dest, default=None) or sorted(installed))
    unknown = [name for name in names if name not in installed]
    if unknown:
        listing = ", ".join(f"{n} ({e.distribution})" for n, e in sorted(installed.items())) or "none"
        raise pytest.UsageError(f"no {kind} named {', '.join(unknown)}; installed: {listing}")
    return names
