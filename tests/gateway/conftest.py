"""The gateway's rooms are tested with the same real gateway, nodes and clients as the core."""

from __future__ import annotations

from ..core.conftest import (  # noqa: F401 - fixtures and helpers, shared
    _one_event_loop_per_module,
    address,
    anyio_backend,
    client_for,
    gateway,
    running_node,
    transport_name,
)
