"""One recorder for the connection states of a node or client, for tests and suites."""

from __future__ import annotations

import anyio

__all__ = ["StateRecorder"]


class StateRecorder:
    """Pass it to ``on_state_change``: every change as ``(state, reason, anyio time)``, and
    event-driven waits for a state to be reached.

    ``seen`` holds ``(state, reason)`` pairs, states as their values (``"ready"``,
    ``"reconnecting"``, ``"closed"``, ...).
    """

    def __init__(self) -> None:
        self.changes: list[tuple[str, str, float]] = []
        self._changed = anyio.Event()

    def __call__(self, old: object, new: object, reason: str) -> None:
        state = getattr(new, "value", str(new))
        try:
            now = anyio.current_time()
        except RuntimeError:  # reported from a thread without an event loop
            now = float("nan")
        self.changes.append((state, reason, now))
        self._changed.set()
        self._changed = anyio.Event()

    @property
    def seen(self) -> list[tuple[str, str]]:
        return [(state, reason) for state, reason, _ in self.changes]

    @property
    def states(self) -> list[str]:
        return [state for state, _, _ in self.changes]

    @property
    def last(self) -> tuple[str, str]:
        return self.seen[-1]

    def reasons(self, state: str) -> list[str]:
        """Why ``state`` was entered, each time it was."""
        return [reason for s, reason, _ in self.changes if s == state]

    async def wait_for(self, state: str, after: int = 0) -> tuple[str, float]:
        """Wait until ``state`` is reached at change ``after`` or later; its reason and time."""
        while True:
            for s, reason, when in self.changes[after:]:
                if s == state:
                    return reason, when
            await self._changed.wait()
