"""Slow and silent connections: each closes after handshake_timeout, a bounded number wait at once,
and a legitimate node and client get through during the attack.

Against a real gateway process on each transport: 1,000 raw TCP connections that never send a
byte (on the gRPC port they never start HTTP/2), then 300 links that finish the transport's
handshake but never say hello.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import anyio
import psutil
import pytest

from easyremote import AsyncClient
from easyremote_core import Connection, LinkOptions, get_plugin_manager, parse_address

from ..scenarios.conftest import FAST, gateway_process, scenario_node

pytestmark = [pytest.mark.timeout(90), pytest.mark.anyio]

HANDSHAKE_TIMEOUT = 2.0
GATEWAY_ARGS = ("--handshake-timeout", str(HANDSHAKE_TIMEOUT), "--max-pending-handshakes", "100")


@pytest.fixture(scope="module", params=["grpc", "tcp"])
def gateway(request: pytest.FixtureRequest) -> Iterator:
    with gateway_process(request.param, extra_args=GATEWAY_ARGS) as process:
        yield process


def url(gateway) -> str:
    return f"{gateway.args[1]}://{gateway.address}"


async def served(gateway, node_id: str) -> float:
    """Seconds for a new node to register and a new client's call to be answered."""
    started = time.monotonic()
    node = scenario_node(url(gateway), node_id)
    async with node, AsyncClient(url(gateway), timeout=10, **FAST) as client:
        with anyio.fail_after(15):
            await node.wait_ready()
            assert await client.execute("add", 2, 3, node_id=node_id) == 5
    return time.monotonic() - started


def still_open(sockets: list[socket.socket]) -> int:
    """How many of ``sockets`` the gateway has not closed."""
    count = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            if sock.recv(1 << 16):
                count += 1  # it said something (an HTTP/2 settings frame) and is still open
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count


async def test_silent_tcp_connections_are_closed_and_do_not_keep_a_node_out(gateway) -> None:
    fds = psutil.Process(gateway.pid).num_fds
    quiet_fds = fds()
    sockets = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(1000)]
    try:
        assert await served(gateway, "during-silence") < 10
        with anyio.fail_after(HANDSHAKE_TIMEOUT + 8):
            while still_open(sockets):  # noqa: ASYNC110 - nothing signals it
                await anyio.sleep(0.25)
        with anyio.fail_after(5):
            while fds() > quiet_fds + 10:  # noqa: ASYNC110 - nothing signals it
                await anyio.sleep(0.1)
    finally:
        for sock in sockets:
            sock.close()
    closing = [line for line in gateway.lines() if "handshake" in line and "tcp link" in line]
    assert len(closing) <= 5, closing  # one line per host and reason per 10 s, not one per connection


async def test_links_that_never_say_hello_are_bounded_and_closed(gateway) -> None:
    transport = get_plugin_manager().transport(gateway.args[1])
    links: list[Connection] = []
    try:
        for _ in range(300):
            links.append(await transport.connect(parse_address(gateway.address), LinkOptions()))
        # 300 links wait for their hello; only 100 may: the oldest 200 are closed at once.
        closed = 0
        with anyio.fail_after(HANDSHAKE_TIMEOUT):
            for link in links[:200]:
                with pytest.raises((anyio.EndOfStream, Exception)):
                    await link.receive()
                closed += 1
        assert closed == 200
        assert await served(gateway, "during-mute") < 10
        with anyio.fail_after(HANDSHAKE_TIMEOUT + 5):  # and the rest after handshake_timeout
            for link in links[200:]:
                with pytest.raises((anyio.EndOfStream, Exception)):
                    await link.receive()
    finally:
        for link in links:
            await link.drop()
    said = [line for line in gateway.lines() if "max_pending_handshakes" in line]
    assert 1 <= len(said) <= 3, said
