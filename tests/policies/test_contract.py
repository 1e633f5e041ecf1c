"""The retry policy contract suite, run against every installed retry policy."""

from __future__ import annotations

from easyremote_core.testing.policy_contract import TestRetryPolicyContract

__all__ = ["TestRetryPolicyContract"]
