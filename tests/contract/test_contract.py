"""The transport contract suite, run against every installed transport on every backend it declares."""

from __future__ import annotations

from easyremote_core.testing.contract import TestTransportContract

__all__ = ["TestTransportContract"]
