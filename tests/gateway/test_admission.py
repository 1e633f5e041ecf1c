"""Admission: every value a peer announces in its hello lies in a finite range, or the peer is refused."""

from __future__ import annotations

import math

import anyio
import pytest

from easyremote import ComputeNode, Gateway
from easyremote.errors import ConfigurationError
from easyremote_core import LinkOptions, get_plugin_manager, parse_address
from easyremote_core._protocol import PROTOCOL_VERSION, decode, encode, pb

from .conftest import client_for, running_node

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def adder(node: ComputeNode) -> None:
    node.register(lambda a, b: a + b, name="add")


async def hello_reply(gw: Gateway, transport_name: str, hello: pb.Hello) -> pb.Envelope:
    transport = get_plugin_manager().transport(transport_name)
    connection = await transport.connect(parse_address(f"127.0.0.1:{gw.port}"), LinkOptions())
    try:
        hello.protocol_version = PROTOCOL_VERSION
        await connection.send(encode(pb.Envelope(hello=hello)))
        with anyio.fail_after(5):
            return decode(await connection.receive())
    finally:
        await connection.aclose()


@pytest.mark.parametrize("transport_name", ["grpc", "tcp"])
@pytest.mark.parametrize("field", ["heartbeat_interval", "heartbeat_timeout"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 1e308, -1.0, 1e-9])
async def test_an_announced_interval_out_of_range_is_refused(transport_name: str, field: str, value: float) -> None:
    async with Gateway(port=0, host="127.0.0.1", transport=transport_name, startup_grace=0) as gw, \
            running_node(gw, "steady", adder), client_for(gw) as client:
        hello = pb.Hello(role=pb.ROLE_NODE, node_id="reckless", heartbeat_interval=1.0, heartbeat_timeout=3.0)
        setattr(hello, field, value)
        reply = await hello_reply(gw, transport_name, hello)
        assert reply.WhichOneof("body") == "reject"
        assert reply.reject.reason == pb.Reject.REASON_BAD_REQUEST
        assert field in reply.reject.message and "between" in reply.reject.message
        assert "reckless" not in gw.nodes()
        assert await client.execute("add", 1, 2) == 3  # everyone else is served as before


@pytest.mark.parametrize("node_id", ["", "x" * 201, "bad\nid", "nul\x00id"])
async def test_a_node_id_must_be_short_and_printable(node_id: str) -> None:
    async with Gateway(port=0, host="127.0.0.1", transport="tcp", startup_grace=0) as gw:
        reply = await hello_reply(gw, "tcp", pb.Hello(role=pb.ROLE_NODE, node_id=node_id, heartbeat_interval=1.0))
        assert reply.WhichOneof("body") == "reject"
        assert "node_id" in reply.reject.message
        assert gw.nodes() == {}


async def test_an_unannounced_interval_takes_the_gateway_default() -> None:
    async with Gateway(port=0, host="127.0.0.1", transport="tcp", startup_grace=0) as gw:
        reply = await hello_reply(gw, "tcp", pb.Hello(role=pb.ROLE_CLIENT))
        assert reply.WhichOneof("body") == "welcome"


@pytest.mark.parametrize("value", [math.inf, 1e308, 0.0001])
def test_a_node_cannot_be_configured_with_what_the_gateway_refuses(value: float) -> None:
    with pytest.raises(ConfigurationError, match="heartbeat_interval"):
        ComputeNode("tcp://127.0.0.1:1", "n", heartbeat_interval=value, heartbeat_timeout=max(value * 3, 1))
