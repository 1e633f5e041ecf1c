"""Noticing that a gateway which refused connections, or accepted them and said nothing, is back."""

from __future__ import annotations

import random
import time

import anyio
from anyio.abc import SocketStream

from ._address import Address

#: Spreads retries and checks; its own generator, so the program's ``random`` state is left alone.
_jitter = random.Random()

#: Seconds between two looks at a refusing gateway (each a TCP connect, jittered ±20 %);
#: also how long a look waits for an accepting gateway's first bytes before calling it hung.
LISTEN_CHECK_INTERVAL = 0.5
#: How long a look that found a gateway hung is remembered (see ``wait_until_listening``).
HUNG_MEMORY = 120.0

# What looks found, per gateway, for every caller in the process (``time.monotonic()``: event
# loops in other threads share it): when one last found it hung, and when one last found it answering.
_hung_at: dict[tuple[str, int], float] = {}
_answering_at: dict[tuple[str, int], float] = {}


async def _connect(address: Address, timeout: float) -> SocketStream | None:
    """A TCP connection to ``address``, or ``None`` if it was refused or not accepted within ``timeout``."""
    with anyio.move_on_after(timeout):
        try:
            return await anyio.connect_tcp(address.host, address.port)
        except OSError:
            return None
    return None


async def _first_word(stream: SocketStream) -> None:
    """Wait until the peer sends something or closes the connection."""
    try:
        await stream.receive(1)
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        pass


async def wait_until_listening(address: Address, interval: float = LISTEN_CHECK_INTERVAL) -> None:
    """Return when the gateway at ``address`` is back after a look found it away; the caller bounds the wait.

    A gateway that refuses connections is back once a connect succeeds. One that accepts a
    connect but sends nothing within ``interval`` is hung (its kernel accepts on its behalf):
    it is back when that connection gets its first bytes or is closed (gateways speak first:
    the gRPC server's HTTP/2 settings, the tcp transport's greeting). A gateway that a look
    (of any caller in this process) found hung is also back when it answers the first look
    of the next call: it woke up in between.
    Otherwise, if the first look finds the gateway answering, the last failure had another
    cause, so there is nothing to wait for: this never returns and the full backoff applies.
    """
    key = (address.host, address.port)
    refused = False
    while True:
        began = time.monotonic()
        stream = await _connect(address, interval)
        if stream is None:
            refused = True
            _hung_at.pop(key, None)
            _answering_at.pop(key, None)
            await anyio.sleep(interval * _jitter.uniform(0.8, 1.2))
            continue
        try:
            if refused:
                return
            with anyio.move_on_after(interval) as silence:
                await _first_word(stream)
            if silence.cancelled_caught:
                _hung_at[key] = time.monotonic()
                await _first_word(stream)
                _answering_at[key] = time.monotonic()
                return
        finally:
            await anyio.aclose_forcefully(stream)
        if _woke_since(key, began):
            return
        await anyio.sleep_forever()  # it answered at once


def _woke_since(key: tuple[str, int], began: float) -> bool:
    """Whether a gateway that answered a look begun at ``began`` was hung shortly before, and no
    look begun since it was found hung (and before this one) has already seen it answering."""
    now = time.monotonic()
    hung, answering = _hung_at.get(key), _answering_at.get(key)
    _answering_at[key] = now
    if hung is None or now - hung > HUNG_MEMORY:
        return False
    return answering is None or not hung <= answering <= began
