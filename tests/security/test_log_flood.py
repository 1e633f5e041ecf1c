"""Quiet under attack: refusals and bad frames are logged once per host and reason per 10 s, with a
count, and no line is longer than 2 KiB, against real gateway processes on both transports."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from easyremote import AsyncClient, ComputeNode
from easyremote_core import LinkOptions, get_plugin_manager, parse_address
from easyremote_core._protocol import PROTOCOL_VERSION, encode, pb
from easyremote_core.testing.processes import GatewayProcess

from ..scenarios.conftest import FAST, gateway_process, scenario_node

pytestmark = [pytest.mark.timeout(90), pytest.mark.anyio]

TOKEN = "the-right-token"


@pytest.fixture(scope="module", params=["grpc", "tcp"])
def gateway(request: pytest.FixtureRequest) -> Iterator[GatewayProcess]:
    with gateway_process(request.param, extra_args=("--token", TOKEN)) as process:
        yield process


def url(gateway: GatewayProcess) -> str:
    return f"{gateway.args[1]}://{gateway.address}"


async def send_first_frame(gateway: GatewayProcess, frame: bytes) -> None:
    """Connect, send ``frame`` as the first frame, read whatever comes back, leave."""
    transport = get_plugin_manager().transport(gateway.args[1])
    connection = await transport.connect(parse_address(gateway.address), LinkOptions())
    try:
        await connection.send(frame)
        with anyio.move_on_after(2):
            await connection.receive()
    except Exception:
        pass
    finally:
        await connection.drop()


async def still_serves(gateway: GatewayProcess, node_id: str) -> None:
    node = scenario_node(url(gateway), node_id, auth_token=TOKEN)
    async with node, AsyncClient(url(gateway), auth_token=TOKEN, timeout=10, **FAST) as client:
        with anyio.fail_after(15):
            await node.wait_ready()
            assert await client.execute("add", 2, 3, node_id=node_id) == 5


def lines_with(gateway: GatewayProcess, text: str) -> list[str]:
    return [line for line in gateway.lines() if text in line]


async def test_wrong_tokens_and_garbage_write_a_few_lines_with_counts(gateway: GatewayProcess) -> None:
    wrong = encode(pb.Envelope(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, role=pb.ROLE_NODE,
                                              node_id="guesser", token="guess", heartbeat_interval=1)))
    before_refused = len(lines_with(gateway, "Refused node"))
    before_garbage = len(lines_with(gateway, "ProtocolError"))
    async with anyio.create_task_group() as tg:
        for _ in range(20):  # 20 at a time, 300 in all
            async def burst() -> None:
                for _ in range(15):
                    await send_first_frame(gateway, wrong)
            tg.start_soon(burst)
    for i in range(300):
        await send_first_frame(gateway, b"\xff\xfe not an envelope " + bytes([i % 256]) * 50)
    await still_serves(gateway, "flood-survivor")
    refused = lines_with(gateway, "Refused node")[before_refused:]
    garbage = lines_with(gateway, "ProtocolError")[before_garbage:]
    assert 1 <= len(refused) <= 3, refused
    assert 1 <= len(garbage) <= 3, garbage
    # (That the next line after the quiet period counts the lines not written: tests/core/test_logs.py.)


async def test_no_line_is_longer_than_2_kib(gateway: GatewayProcess) -> None:
    node = ComputeNode(url(gateway), "n" * 200, auth_token=TOKEN, **FAST)
    for i in range(5000):
        node.register(lambda i=i: i, name=f"{i:05}" + "f" * 195)
    async with node:
        with anyio.fail_after(20):
            await node.wait_ready()
    bad = encode(pb.Envelope(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, role=pb.ROLE_NODE,
                                            node_id="x" * 100_000, token=TOKEN)))
    await send_first_frame(gateway, bad)
    await still_serves(gateway, "long-lines-survivor")
    assert lines_with(gateway, "registered 5000 function(s)")
    longest = max(gateway.lines(), key=len)
    assert len(longest) <= 2048 + 40, longest[:300]  # the line, plus the time and level in front
