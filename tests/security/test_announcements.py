"""What a peer announces is bounded: against real gateway processes on both transports, hellos
and registrations out of range are refused with their reason, and a legitimate node and client
are served afterwards."""

from __future__ import annotations

import math
from collections.abc import Iterator

import anyio
import pytest

from easyremote import AsyncClient
from easyremote_core import LinkOptions, get_plugin_manager, parse_address
from easyremote_core._protocol import PROTOCOL_VERSION, decode, encode, pb
from easyremote_core.testing.processes import GatewayProcess

from ..scenarios.conftest import FAST, gateway_process, scenario_node

pytestmark = [pytest.mark.timeout(60), pytest.mark.anyio]


@pytest.fixture(scope="module", params=["grpc", "tcp"])
def gateway(request: pytest.FixtureRequest) -> Iterator[GatewayProcess]:
    with gateway_process(request.param) as process:
        yield process


async def answers(gateway: GatewayProcess, *frames: pb.Envelope) -> list[pb.Envelope]:
    """Send ``frames`` on a fresh link; every frame the gateway sends back until it closes (5 s at most)."""
    transport = get_plugin_manager().transport(gateway.args[1])
    connection = await transport.connect(parse_address(gateway.address), LinkOptions())
    got: list[pb.Envelope] = []
    try:
        for frame in frames:
            await connection.send(encode(frame))
        with anyio.move_on_after(5):
            while True:
                got.append(decode(await connection.receive()))
                if got[-1].WhichOneof("body") == "reject":
                    break
    except Exception:
        pass
    finally:
        await connection.drop()
    return got


def hello(**fields: object) -> pb.Envelope:
    base: dict[str, object] = dict(protocol_version=PROTOCOL_VERSION, role=pb.ROLE_NODE, node_id="reckless",
                                   heartbeat_interval=1.0, heartbeat_timeout=3.0)
    base.update(fields)
    return pb.Envelope(hello=pb.Hello(**base))  # type: ignore[arg-type]


async def still_serves(gateway: GatewayProcess, node_id: str) -> None:
    url = f"{gateway.args[1]}://{gateway.address}"
    node = scenario_node(url, node_id)
    async with node, AsyncClient(url, timeout=10, **FAST) as client:
        with anyio.fail_after(15):
            await node.wait_ready()
            assert await client.execute("add", 2, 3, node_id=node_id) == 5


@pytest.mark.parametrize(("fields", "says"), [
    ({"heartbeat_interval": math.inf}, "heartbeat_interval"),
    ({"heartbeat_interval": math.nan}, "heartbeat_interval"),
    ({"heartbeat_timeout": 1e308}, "heartbeat_timeout"),
    ({"node_id": "x" * 201}, "node_id"),
    ({"role": pb.ROLE_CLIENT, "client_key": b"short"}, "client_key"),
])
async def test_a_hello_out_of_range_is_refused_with_its_reason(gateway: GatewayProcess, fields: dict[str, object],
                                                              says: str) -> None:
    got = await answers(gateway, hello(**fields))
    assert [e.WhichOneof("body") for e in got] == ["reject"], got
    assert says in got[0].reject.message


async def test_registrations_beyond_the_bounds_are_refused_and_the_gateway_serves_on(gateway: GatewayProcess) -> None:
    too_many = pb.Register(functions=[pb.FunctionSpec(name=f"f{i}") for i in range(10_001)])
    got = await answers(gateway, hello(node_id="greedy"), pb.Envelope(register=too_many))
    assert got[-1].WhichOneof("body") == "reject" and "max_functions" in got[-1].reject.message
    long_name = pb.Register(functions=[pb.FunctionSpec(name="f" * 201)])
    got = await answers(gateway, hello(node_id="verbose"), pb.Envelope(register=long_name))
    assert got[-1].WhichOneof("body") == "reject" and "function name" in got[-1].reject.message
    await still_serves(gateway, "after-announcements")
