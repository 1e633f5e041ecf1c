"""The wire protocol: generated code is current, frames round-trip, other versions are refused on both ends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from easyremote import ComputeNode, Gateway
from easyremote.errors import ProtocolError
from easyremote_core import LinkOptions, get_plugin_manager, parse_address
from easyremote_core._protocol import (
    ATTACH_FROM,
    PROTOCOL_VERSION,
    decode,
    decode_frame,
    encode,
    pb,
    split_payload,
    whole_frame,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_generated_code_is_current() -> None:
    result = subprocess.run([sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, f"regenerate with 'python scripts/gen_protos.py': {result.stderr}"


def test_frames_round_trip_and_carry_the_version() -> None:
    frame = encode(pb.Envelope(call=pb.CallRequest(call_id="c1", function="add", payload=b"\x00" * 10)))
    envelope = decode(frame)
    assert envelope.protocol_version == PROTOCOL_VERSION
    assert envelope.call.function == "add" and envelope.call.payload == b"\x00" * 10


def test_a_large_payload_travels_attached_and_is_read_without_a_copy() -> None:
    payload = bytes(range(256)) * (ATTACH_FROM // 256)
    inline, attached = split_payload(payload)
    assert inline == b"" and attached is payload
    assert split_payload(b"small") == (b"small", None)
    frame = encode(pb.Envelope(result=pb.Result(call_id="c1")), attached)
    envelope, attachment = decode_frame(frame)
    assert envelope.result.call_id == "c1" and envelope.result.payload == b""
    assert isinstance(attachment, memoryview) and attachment.obj is frame  # a view of the frame
    assert attachment == payload
    assert whole_frame(attachment) is frame  # a gateway forwards the frame as it came


@pytest.mark.parametrize("frame", [
    b"\x02\x00\x00",  # ends inside its header
    b"\x02\x00\x00\x10\x00" + b"x" * 10,  # its envelope runs past its end
    encode(pb.Envelope(heartbeat=pb.Heartbeat(seq=1)), b"payload"),  # only calls, results and items
    encode(pb.Envelope(call=pb.CallRequest(call_id="c", payload=b"inline")), b"and attached"),
])
def test_malformed_attachments_are_protocol_errors(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_frame(frame)


def test_a_frame_with_an_attachment_is_refused_where_none_may_come() -> None:
    with pytest.raises(ProtocolError, match="unexpected attachment"):
        decode(encode(pb.Envelope(call=pb.CallRequest(call_id="c")), b"x"))


@pytest.mark.parametrize("frame", [b"\xff\xff\xff", b"",
                                   pb.Envelope(protocol_version=PROTOCOL_VERSION).SerializeToString()])
def test_malformed_frames_are_protocol_errors(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(frame)


def test_another_version_is_a_protocol_error() -> None:
    frame = pb.Envelope(protocol_version=PROTOCOL_VERSION + 1, hello=pb.Hello()).SerializeToString()
    with pytest.raises(ProtocolError, match=f"version {PROTOCOL_VERSION + 1}"):
        decode(frame)


@pytest.mark.anyio
@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport_name", ["grpc", "tcp"])
async def test_gateway_refuses_a_peer_of_another_version(transport_name: str, caplog) -> None:
    transport = get_plugin_manager().transport(transport_name)
    async with Gateway(port=0, host="127.0.0.1", transport=transport_name, startup_grace=0) as gw:
        connection = await transport.connect(parse_address(f"127.0.0.1:{gw.port}"), LinkOptions())
        hello = pb.Envelope(protocol_version=99, hello=pb.Hello(protocol_version=99, role=pb.ROLE_NODE,
                                                                node_id="future-node"))
        await connection.send(hello.SerializeToString())
        with anyio.fail_after(5):
            reply = decode(await connection.receive())
        assert reply.WhichOneof("body") == "reject"
        assert reply.reject.reason == pb.Reject.REASON_PROTOCOL
        assert "version 99" in reply.reject.message
        await connection.aclose()
        assert any("ProtocolError" in r.getMessage() and "version 99" in r.getMessage() for r in caplog.records)
        assert gw.nodes() == {}


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_node_refuses_a_gateway_of_another_version() -> None:
    """A stand-in gateway (a bare tcp listener) that welcomes with protocol version 99."""
    transport = get_plugin_manager().transport("tcp")
    listener = await transport.listen("127.0.0.1", 0, LinkOptions())

    async def future_gateway(connection) -> None:
        await connection.receive()
        welcome = pb.Envelope(protocol_version=99, welcome=pb.Welcome(protocol_version=99))
        await connection.send(welcome.SerializeToString())
        with anyio.move_on_after(5):
            await connection.receive()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, future_gateway)
        node = ComputeNode(f"tcp://127.0.0.1:{listener.port}", "today-node", max_retry_attempts=3)
        with anyio.fail_after(10), pytest.raises(ProtocolError, match="version 99"):
            await node.run()
        tg.cancel_scope.cancel()
    await listener.aclose()


@pytest.mark.parametrize("code", sorted(pb.Error.Code.values()))
def test_every_error_code_gives_a_message(code: int) -> None:
    from easyremote_core._protocol import error_from_frame

    error = error_from_frame(pb.Error(call_id="c1", code=code))
    assert str(error).strip(), f"{pb.Error.Code.Name(code)} gives an empty message"


def test_an_unknown_error_code_still_gives_a_message() -> None:
    from easyremote_core._protocol import error_from_frame

    assert "99" in str(error_from_frame(pb.Error(call_id="c1", code=99)))
