"""The gateway, as rooms: admission, identities, registry, router and calls, wired by ``Gateway``."""

from __future__ import annotations

from ._gateway import Gateway

__all__ = ["Gateway"]
