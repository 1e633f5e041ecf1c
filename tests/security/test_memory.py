"""Peers that stop reading cannot grow the gateway's memory, and legitimate callers stay fast.

Two attacks from another process against a real gateway process, on both transports:
a client that floods node-list requests and never reads the answers, and a node that
registers, keeps its link alive with heartbeats and never reads the 1 MiB calls sent to it.
Each peer is cut off once ``max_peer_buffer`` bytes wait for it; meanwhile the gateway's RSS
stays below +200 MB and a legitimate caller's median latency below 3x its quiet value.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import anyio
import psutil
import pytest

from easyremote import AsyncClient, ComputeNode
from easyremote_core.testing.processes import GatewayProcess, PythonProcess

from ..scenarios.conftest import FAST, gateway_process, in_thread

pytestmark = [pytest.mark.timeout(120), pytest.mark.anyio]

MiB = 1024 * 1024
#: 16 MiB frames make the default max_peer_buffer 64 MiB (4 x max_message_size).
GATEWAY_ARGS = ("--max-message-size", "16MiB")

ATTACKER = r"""
import os, sys, time
import anyio
from easyremote_core import ConnectionLostError, LinkOptions, get_plugin_manager, parse_address
from easyremote_core._protocol import PROTOCOL_VERSION, decode, dump_arguments, encode, pb
import easyremote_grpc._connection
easyremote_grpc._connection.RECEIVE_BUFFER = 1  # the link's reader stops after one frame: it never reads

url, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
address = parse_address(url)
transport = get_plugin_manager().transport(address.scheme)

async def connect(hello):
    connection = await transport.connect(address, LinkOptions(max_message_size=16 * 1024 * 1024))
    hello.protocol_version = PROTOCOL_VERSION
    await connection.send(encode(pb.Envelope(hello=hello)))
    assert decode(await connection.receive()).WhichOneof("body") == "welcome"
    return connection

async def paced(connection, frame, rate, until):
    sent = 0
    started = time.monotonic()
    try:
        while time.monotonic() < until:
            await connection.send(frame)
            sent += 1
            await anyio.sleep(max(0, started + sent / rate - time.monotonic()))
            if sent % 10 == 0:
                await connection.send(encode(pb.Envelope(heartbeat=pb.Heartbeat(seq=sent))))
    except ConnectionLostError:
        print(f"cut off after {sent} frames", flush=True)
        return True
    return False

async def list_flood(until):
    while time.monotonic() < until:
        connection = await connect(pb.Hello(role=pb.ROLE_CLIENT, client_key=os.urandom(16),
                                            heartbeat_interval=1, heartbeat_timeout=30))
        await paced(connection, encode(pb.Envelope(list_nodes=pb.ListNodes(request_id="x", page_size=500))),
                    400, until)
        await connection.drop()

async def deaf_node(until):
    while time.monotonic() < until:
        connection = await connect(pb.Hello(role=pb.ROLE_NODE, node_id="deaf", heartbeat_interval=1,
                                            heartbeat_timeout=30))
        await connection.send(encode(pb.Envelope(register=pb.Register(
            functions=[pb.FunctionSpec(name="sink")], max_queue_size=10_000, max_concurrency=10_000))))
        try:
            while time.monotonic() < until:
                await anyio.sleep(0.5)
                await connection.send(encode(pb.Envelope(heartbeat=pb.Heartbeat(seq=1))))
        except ConnectionLostError:
            print("deaf node cut off", flush=True)
        await connection.drop()

async def call_flood(until):
    connection = await connect(pb.Hello(role=pb.ROLE_CLIENT, client_key=os.urandom(16),
                                        heartbeat_interval=1, heartbeat_timeout=30))
    payload = dump_arguments((os.urandom(1024 * 1024),), {})
    n = 0
    started = time.monotonic()
    while time.monotonic() < until:
        n += 1
        await connection.send(encode(pb.Envelope(call=pb.CallRequest(
            call_id=f"sink-{n}", function="sink", payload=payload, timeout=1, attempt=1))))
        if n > 40:  # as a real client does when a call times out, give up the call of a second ago
            await connection.send(encode(pb.Envelope(cancel=pb.Cancel(call_id=f"sink-{n - 40}"))))
        # calls answered with errors (the node was cut off) are read, so this client is not cut off itself
        with anyio.move_on_after(0):
            await connection.receive()
        await anyio.sleep(max(0, started + n / 40 - time.monotonic()))  # 40 MB/s

async def main():
    until = time.monotonic() + seconds
    print("attacking", flush=True)
    if mode == "list":
        await list_flood(until)
    else:
        async with anyio.create_task_group() as tg:
            tg.start_soon(deaf_node, until)
            await anyio.sleep(1)
            tg.start_soon(call_flood, until)
    print("done", flush=True)

anyio.run(main)
"""


@pytest.fixture(scope="module", params=["grpc", "tcp"])
def gateway(request: pytest.FixtureRequest) -> Iterator[GatewayProcess]:
    with gateway_process(request.param, extra_args=GATEWAY_ARGS) as process:
        yield process


def url(gateway: GatewayProcess) -> str:
    return f"{gateway.args[1]}://{gateway.address}"


def wide_node(address: str) -> ComputeNode:
    """A legitimate node with 2,000 long function names: each node-list page is about 200 KB."""
    node = ComputeNode(address, "wide", **FAST)
    node.register(lambda a, b: a + b, name="add")
    for i in range(2000):
        node.register(lambda i=i: i, name=f"function_with_a_long_descriptive_name_number_{i:05}_" + "x" * 40)
    return node


async def median_latency(client: AsyncClient, seconds: float) -> float:
    samples = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        started = time.perf_counter()
        assert await client.execute("add", 1, 2, node_id="wide") == 3
        samples.append(time.perf_counter() - started)
        await anyio.sleep(0.01)
    return statistics.median(samples)


@pytest.mark.parametrize("attack", ["list", "deaf-node"])
async def test_a_peer_that_never_reads_is_cut_off_and_hurts_no_one(gateway: GatewayProcess, attack: str) -> None:
    rss = psutil.Process(gateway.pid).memory_info
    node = wide_node(url(gateway))
    async with node, AsyncClient(url(gateway), timeout=10, **FAST) as client:
        with anyio.fail_after(20):
            await node.wait_ready()
            await client.wait_ready()
        quiet = await median_latency(client, 1.5)
        before = rss().rss
        peak = before
        with PythonProcess(ATTACKER, args=(url(gateway), attack, "6"), name=f"attacker-{attack}") as attacker:
            await in_thread(attacker.start)
            await in_thread(attacker.wait_for_line, "attacking", 20)
            async with anyio.create_task_group() as tg:
                async def watch_memory() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, rss().rss)
                        await anyio.sleep(0.1)
                tg.start_soon(watch_memory)
                await anyio.sleep(1.5)  # the attack is under way
                loaded = await median_latency(client, 3)
                tg.cancel_scope.cancel()
            await in_thread(attacker.wait_for_line, "done", 30)
        # The baseline is taken before and after the attack: what else loads the machine then
        # (another test's processes) is in both, the attack only in one.
        quiet = max(quiet, await median_latency(client, 1.5))
        print(f"{gateway.args[1]} {attack}: gateway RSS +{(peak - before) / MiB:.0f} MB at most; legitimate p50 "
              f"{quiet * 1000:.2f} ms quiet, {loaded * 1000:.2f} ms under attack ({loaded / quiet:.2f}x)")
        assert peak - before < 200 * MiB, f"gateway RSS grew by {(peak - before) / MiB:.0f} MB"
        assert loaded < 3 * max(quiet, 0.001), f"p50 {loaded * 1000:.2f} ms under attack, {quiet * 1000:.2f} ms quiet"
        assert await client.execute("add", 2, 3, node_id="wide") == 5
        cut = [line for line in gateway.lines() if "Cut off" in line and "max_peer_buffer" in line]
        assert cut, "no log line for the cut-off peer"
