"""The health probe contract suite, run against every installed health probe."""

from __future__ import annotations

from easyremote_core.testing.probe_contract import TestHealthProbeContract

__all__ = ["TestHealthProbeContract"]
