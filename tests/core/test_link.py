"""The link alone, over the in-memory transport: heartbeats answered, frames handed on, orderly and
broken ends, a failing handler or probe, and the cut-off of a peer that stops reading."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import pytest

from easyremote_core import Address, Connection, HealthProbe, LinkOptions
from easyremote_core._link import Link
from easyremote_core._protocol import decode, encode, pb
from easyremote_core.testing.memory import MemoryTransport

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


@asynccontextmanager
async def pair() -> AsyncIterator[tuple[Connection, Connection]]:
    """Two ends of one in-memory link: (ours, the peer's)."""
    transport = MemoryTransport()
    listener = await transport.listen("127.0.0.1", 0, LinkOptions())
    arrived: list[Connection] = []
    accepted = anyio.Event()
    done = anyio.Event()

    async def hold(connection: Connection) -> None:
        arrived.append(connection)
        accepted.set()
        await done.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        ours = await transport.connect(Address("127.0.0.1", listener.port, "memory"), LinkOptions())
        await accepted.wait()
        try:
            yield ours, arrived[0]
        finally:
            done.set()
            await listener.aclose()
            tg.cancel_scope.cancel()


def make_link(connection: Connection, **options: object) -> Link:
    settings: dict[str, object] = dict(on_frame=lambda envelope, attachment: None,
                                       heartbeat_interval=5.0, heartbeat_timeout=15.0, health_check_interval=15.0,
                                       probes=[], send_heartbeats=False, peer_name="peer")
    settings.update(options)
    return Link(connection, **settings)  # type: ignore[arg-type]


async def test_heartbeats_are_answered_and_other_frames_handed_on() -> None:
    frames: list[pb.Envelope] = []
    handed_on = anyio.Event()

    def on_frame(envelope: pb.Envelope, attachment: object) -> None:
        frames.append(envelope)
        handed_on.set()

    async with pair() as (ours, peer), anyio.create_task_group() as tg:
        link = make_link(ours, on_frame=on_frame)
        tg.start_soon(link.run)
        await peer.send(encode(pb.Envelope(heartbeat=pb.Heartbeat(seq=7))))
        reply = decode(await peer.receive())
        assert reply.heartbeat.seq == 7 and reply.heartbeat.reply
        await peer.send(encode(pb.Envelope(goodbye=pb.Goodbye(reason="bye"))))
        with anyio.fail_after(5):
            await handed_on.wait()
        assert frames[0].WhichOneof("body") == "goodbye" and not frames[0].HasField("heartbeat")
        link.close("done")


async def test_close_writes_what_is_queued_then_ends_in_order() -> None:
    async with pair() as (ours, peer):
        link = make_link(ours)
        async with anyio.create_task_group() as tg:
            tg.start_soon(link.run)
            await anyio.wait_all_tasks_blocked()
            for seq in range(3):
                link.send(pb.Envelope(heartbeat=pb.Heartbeat(seq=seq, reply=True)))
            link.close("finished")
        assert link.end_reason == "finished"
        assert [decode(await peer.receive()).heartbeat.seq for _ in range(3)] == [0, 1, 2]
        with pytest.raises(anyio.EndOfStream):
            await peer.receive()


async def test_a_handler_that_raises_is_logged_and_the_link_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def handler(envelope: pb.Envelope, attachment: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in a frame handler")

    async with pair() as (ours, peer), anyio.create_task_group() as tg:
        link = make_link(ours, on_frame=handler)
        tg.start_soon(link.run)
        with caplog.at_level(logging.ERROR, logger="easyremote.link"):
            for _ in range(2):
                await peer.send(encode(pb.Envelope(goodbye=pb.Goodbye(reason="x"))))
            await peer.send(encode(pb.Envelope(heartbeat=pb.Heartbeat(seq=1))))
            assert decode(await peer.receive()).heartbeat.reply  # still answering
        assert calls == 2 and not link.ended.is_set()
        assert any("error handling a goodbye frame" in r.getMessage() for r in caplog.records)
        link.close("done")


async def test_a_malformed_frame_ends_the_link_as_a_protocol_error() -> None:
    async with pair() as (ours, peer):
        link = make_link(ours)
        async with anyio.create_task_group() as tg:
            tg.start_soon(link.run)
            await peer.send(b"\xff\xfe\xfd")
        assert link.end_reason.startswith("protocol error")


async def test_a_probe_that_raises_ends_the_link() -> None:
    class Broken(HealthProbe):
        name = "broken"

        async def watch(self, link) -> None:  # type: ignore[no-untyped-def]
            raise ValueError("probe bug")

    async with pair() as (ours, _peer):
        link = make_link(ours, probes=[Broken()])
        with anyio.fail_after(5):
            reason = await link.run()
    assert reason == "health probe 'broken' failed: ValueError: probe bug"


async def test_a_peer_that_stops_reading_is_cut_off_past_max_buffer(caplog: pytest.LogCaptureFixture) -> None:
    async with pair() as (ours, _peer):  # the peer never reads: the memory link holds 64 frames
        link = make_link(ours, max_buffer=100_000)
        with caplog.at_level(logging.WARNING, logger="easyremote.link"):
            async with anyio.create_task_group() as tg:
                tg.start_soon(link.run)
                await anyio.wait_all_tasks_blocked()
                for _ in range(500):
                    link.send(pb.Envelope(result=pb.Result(call_id="c", payload=b"x" * 1000)))
                    await anyio.lowlevel.checkpoint()
        assert link.end_reason.startswith("cut off: the peer stopped reading")
        assert link.queued_bytes == 0
        cut = [r for r in caplog.records if r.getMessage().startswith("Cut off peer")]
        assert len(cut) == 1, [r.getMessage() for r in caplog.records]


async def test_without_a_bound_nothing_is_cut_off() -> None:
    async with pair() as (ours, _peer):
        link = make_link(ours)
        assert link.max_buffer == math.inf
        async with anyio.create_task_group() as tg:
            tg.start_soon(link.run)
            await anyio.wait_all_tasks_blocked()
            for _ in range(200):
                link.send(pb.Envelope(result=pb.Result(call_id="c", payload=b"x" * 1000)))
            await anyio.wait_all_tasks_blocked()
            assert not link.ended.is_set() and link.queued_bytes > 100_000
            link._end("test over")
