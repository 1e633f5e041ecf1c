"""Tokens and hostile peers: refused clearly, and the gateway goes on serving everyone else."""

from __future__ import annotations

import anyio
import pytest

from easyremote import AsyncClient, ComputeNode, Gateway
from easyremote.errors import AuthenticationError
from easyremote_core import LinkOptions, get_plugin_manager, parse_address
from easyremote_core._protocol import PROTOCOL_VERSION, decode, pb

from .conftest import client_for, running_node

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def adder(node: ComputeNode) -> None:
    node.register(lambda a, b: a + b, name="add")


@pytest.mark.parametrize("transport_name", ["grpc", "tcp"])
async def test_a_token_is_required_when_set(transport_name: str, caplog) -> None:
    async with Gateway(port=0, host="127.0.0.1", transport=transport_name, auth_token="s3cret",
                       startup_grace=0) as gw:
        assert not any("No auth_token is set" in r.getMessage() for r in caplog.records)
        address = f"{transport_name}://127.0.0.1:{gw.port}"
        intruder = ComputeNode(address, "intruder", auth_token="guess", reconnect_interval=0.1)
        with anyio.fail_after(10), pytest.raises(AuthenticationError, match="missing or wrong auth token"):
            await intruder.run()  # no retrying a refused token
        async with AsyncClient(address, auth_token=None, timeout=5) as anonymous:
            with pytest.raises(AuthenticationError):
                await anonymous.execute("add", 1, 2)
        async with running_node(gw, "trusted", adder, auth_token="s3cret"), \
                client_for(gw, auth_token="s3cret") as client:
            assert await client.execute("add", 2, 2) == 4


async def test_without_a_token_the_gateway_warns(caplog) -> None:
    async with Gateway(port=0, host="127.0.0.1", transport="tcp"):
        pass
    assert any("No auth_token is set: anyone who can reach" in r.getMessage() for r in caplog.records)


async def test_a_node_id_cannot_be_taken_over_with_another_credential() -> None:
    credentials = {"alice-token": {"role": "node", "node_ids": ["alice-*"]},
                   "bob-token": {"role": "node", "node_ids": ["bob-*"]},
                   "caller-token": {"role": "client"}}
    async with Gateway(port=0, host="127.0.0.1", transport="tcp", credentials=credentials,
                       startup_grace=0) as gw:
        async with running_node(gw, "alice-gpu", adder, auth_token="alice-token"):
            thief = ComputeNode(f"tcp://127.0.0.1:{gw.port}", "alice-gpu", auth_token="bob-token")
            adder(thief)
            with anyio.fail_after(10), pytest.raises(AuthenticationError,
                                                     match="may not claim node_id 'alice-gpu'"):
                await thief.run()
            async with client_for(gw, auth_token="caller-token") as client:
                assert await client.execute("add", 1, 1) == 2  # still served by alice's node


@pytest.mark.parametrize("transport_name", ["grpc", "tcp"])
async def test_garbage_and_wrong_first_frames_are_refused_and_nothing_else_breaks(transport_name: str) -> None:
    transport = get_plugin_manager().transport(transport_name)
    async with Gateway(port=0, host="127.0.0.1", transport=transport_name, startup_grace=0) as gw, \
            running_node(gw, "steady", adder), client_for(gw) as client:
        target = parse_address(f"127.0.0.1:{gw.port}")
        for frame in (b"\xff\x00garbage", pb.Envelope(protocol_version=PROTOCOL_VERSION,
                                                      call=pb.CallRequest(function="add")).SerializeToString()):
            connection = await transport.connect(target, LinkOptions())
            await connection.send(frame)
            with anyio.fail_after(5):
                reply = decode(await connection.receive())
            assert reply.WhichOneof("body") == "reject"
            assert reply.reject.reason == pb.Reject.REASON_PROTOCOL
            await connection.aclose()
        silent = await transport.connect(target, LinkOptions())  # connects and never speaks
        assert await client.execute("add", 20, 22) == 42
        await silent.aclose()
        assert gw.nodes() == {"steady": "ready"}
