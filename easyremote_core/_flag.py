"""A one-shot event that costs an ``anyio.Event`` only once someone waits for it."""

from __future__ import annotations

import anyio
import anyio.lowlevel


class Flag:
    """``set()``, ``is_set()`` and ``await wait()``, as ``anyio.Event``.

    A gateway keeps several per link, and most are never waited for; an ``anyio.Event``
    (on asyncio an ``asyncio.Event`` with its deque) is made only for a waiter.
    """

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: anyio.Event | None = None

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        if self._set:
            await anyio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()
