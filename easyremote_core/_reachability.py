"""Noticing that a gateway which refused connections is listening again."""

from __future__ import annotations

import random

import anyio

from ._address import Address

#: Seconds between two looks at a refusing gateway (each a TCP connect, jittered ±20 %).
LISTEN_CHECK_INTERVAL = 0.5


async def _accepts(address: Address, timeout: float) -> bool:
    with anyio.move_on_after(timeout):
        try:
            stream = await anyio.connect_tcp(address.host, address.port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


async def wait_until_listening(address: Address, interval: float = LISTEN_CHECK_INTERVAL) -> None:
    """Return when a TCP connect to ``address`` succeeds after having failed.

    If the address accepts connections right away, the last failure had another
    cause (a hung or overloaded gateway), so there is nothing to wait for: this
    never returns and the caller's full backoff applies.
    """
    if await _accepts(address, interval):
        await anyio.sleep_forever()
    while True:
        await anyio.sleep(interval * random.uniform(0.8, 1.2))
        if await _accepts(address, interval):
            return
