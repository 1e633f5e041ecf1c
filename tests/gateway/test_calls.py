"""The call table: answers held for an absent caller are bounded, and the caller learns what was dropped."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from easyremote import ComputeNode, Gateway
from easyremote_core import Connection, LinkOptions, get_plugin_manager, parse_address
from easyremote_core._protocol import PROTOCOL_VERSION, ErrorCode, decode, dump_arguments, encode, pb

from .conftest import client_for, running_node

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

MiB = 1024 * 1024


@asynccontextmanager
async def raw_client(gw: Gateway, key: bytes) -> AsyncIterator[Connection]:
    """A client link that speaks the protocol by hand: hello with ``key``, then whatever the test sends."""
    transport = get_plugin_manager().transport("tcp")
    connection = await transport.connect(parse_address(f"127.0.0.1:{gw.port}"), LinkOptions())
    try:
        await connection.send(encode(pb.Envelope(hello=pb.Hello(
            protocol_version=PROTOCOL_VERSION, role=pb.ROLE_CLIENT, client_key=key, heartbeat_interval=5,
            heartbeat_timeout=15))))
        with anyio.fail_after(5):
            assert decode(await connection.receive()).WhichOneof("body") == "welcome"
        yield connection
    finally:
        await connection.drop()


async def accepted(gw: Gateway, call_id: str) -> None:
    with anyio.fail_after(10):
        while call_id not in gw._calls.calls:  # noqa: ASYNC110 - nothing signals it
            await anyio.sleep(0.01)


def chunks(node: ComputeNode) -> None:
    async def pour(count: int, size: int, delay: float) -> AsyncIterator[bytes]:
        for _ in range(count):
            await anyio.sleep(delay)  # the caller leaves before the first item
            yield os.urandom(size)
    node.register(pour, name="pour")
    node.register(lambda: "done", name="small")


async def test_answers_held_for_an_absent_caller_are_bounded_and_the_caller_is_told() -> None:
    async with Gateway(port=0, host="127.0.0.1", transport="tcp", startup_grace=0, node_grace=30,
                       max_message_size=MiB, max_peer_buffer=2 * MiB) as gw, running_node(gw, "pourer", chunks):
        key = os.urandom(16)
        request = pb.CallRequest(call_id="held-1", function="pour", streaming=True, attempt=1,
                                 payload=dump_arguments((12, 512 * 1024, 0.05), {}))
        async with raw_client(gw, key) as connection:
            await connection.send(encode(pb.Envelope(call=request)))
            await accepted(gw, request.call_id)
        # The caller is gone; 6 MiB of items arrive for it, three times what may be held.
        with anyio.fail_after(20):
            while not gw._calls.calls["held-1"].held or gw._calls.calls["held-1"].node is not None:  # noqa: ASYNC110 - nothing signals it
                await anyio.sleep(0.05)
        call = gw._calls.calls["held-1"]
        assert sum(envelope.ByteSize() + len(attached or b"") for envelope, attached in call.held) < 2 * MiB
        async with raw_client(gw, key) as connection:  # the caller comes back and asks again
            request.attempt = 2
            await connection.send(encode(pb.Envelope(call=request)))
            with anyio.fail_after(10):
                while True:
                    envelope = decode(await connection.receive())
                    if envelope.WhichOneof("body") == "error":
                        break
        assert envelope.error.code == ErrorCode.CODE_CANCELLED
        assert "were dropped" in envelope.error.message and "max_peer_buffer" in envelope.error.message
        assert "held-1" not in gw._calls.calls
        async with client_for(gw) as client:  # the node and the gateway go on
            assert await client.execute("small") == "done"


async def test_answers_within_the_bound_wait_for_the_caller() -> None:
    async with Gateway(port=0, host="127.0.0.1", transport="tcp", startup_grace=0, node_grace=30,
                       max_message_size=MiB, max_peer_buffer=2 * MiB) as gw, running_node(gw, "pourer", chunks):
        key = os.urandom(16)
        request = pb.CallRequest(call_id="held-2", function="pour", streaming=True, attempt=1,
                                 payload=dump_arguments((3, 1024, 0.2), {}))
        async with raw_client(gw, key) as connection:
            await connection.send(encode(pb.Envelope(call=request)))
            await accepted(gw, request.call_id)
        with anyio.fail_after(20):
            while not any(e.WhichOneof("body") == "end" for e, _ in gw._calls.calls["held-2"].held):  # noqa: ASYNC110 - nothing signals it
                await anyio.sleep(0.05)
        async with raw_client(gw, key) as connection:
            request.attempt = 2
            await connection.send(encode(pb.Envelope(call=request)))
            with anyio.fail_after(10):
                kinds = [decode(await connection.receive()).WhichOneof("body") for _ in range(4)]
        assert kinds == ["item", "item", "item", "end"]
