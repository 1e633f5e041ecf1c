"""A bounded set of places for work that may hang (connections in their handshake): when all are
taken, the oldest holder is cancelled to make room, so slow peers cannot keep quick ones out."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio


class OldestOut:
    """At most ``size`` blocks inside :meth:`slot` at once; one more cancels the oldest block."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._held: dict[anyio.CancelScope, None] = {}  # oldest first

    def __len__(self) -> int:
        return len(self._held)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a place while the block runs; a block cancelled to make room just ends (check
        afterwards whether it got as far as it needed)."""
        with anyio.CancelScope() as scope:
            if len(self._held) >= self.size:
                oldest = next(iter(self._held))
                del self._held[oldest]
                oldest.cancel()
            self._held[scope] = None
            try:
                yield
            finally:
                self._held.pop(scope, None)
