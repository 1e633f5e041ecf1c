"""The reconnection guide's scenarios under real faults: a gateway process, a node, a client calling throughout."""

from __future__ import annotations

import asyncio
import gc

import anyio
import psutil
import pytest
from easyremote_tcp import TcpTransport

from easyremote.errors import GatewayUnavailableError
from easyremote_core.testing.chaos import ChaosProxy

from .conftest import FAST, calling, gateway_process, in_thread, scenario_node

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

GUIDE_LINES = ["Connection error (attempt 1)", "Reconnecting in", "Attempting to reconnect...",
               "channel to VPS established successfully", "Registered to VPS successfully"]


def in_order(lines: list[str], expected: list[str]) -> bool:
    position = 0
    for line in lines:
        if position < len(expected) and expected[position] in line:
            position += 1
    return position == len(expected)


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
async def test_gateway_restart(transport: str, timeline) -> None:
    with gateway_process(transport) as gateway:
        address = f"{transport}://{gateway.address}"
        node = scenario_node(address)
        async with node, calling(address, serving=node) as calls:
            await node.wait_ready()
            began = anyio.current_time()
            await calls.success_after(began)

            killed = anyio.current_time()
            await in_thread(gateway.kill)  # SIGKILL
            await timeline.wait_for("Connection error (attempt 1)", after=killed)
            await anyio.sleep(3.0)  # the outage
            await in_thread(gateway.restart)
            listening = anyio.current_time()

            registered = await timeline.wait_for("Registered to VPS successfully", after=listening)
            served = await calls.success_after(listening)

        lines = [line for _, line in timeline.lines(after=killed)]
        assert in_order(lines, GUIDE_LINES), lines
        assert node._reconnect_count >= 1
        assert registered - listening < 3.0, "the node came back too slowly"
        assert served - listening < 5.0
        # add() is idempotent: a call caught by the restart is asked again, never lost
        assert calls.failures() == []


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
async def test_network_blackhole_then_heal(transport: str, timeline) -> None:
    with gateway_process(transport) as gateway:
        async with ChaosProxy(gateway.port) as proxy:
            node = scenario_node(f"{transport}://{proxy.address}")
            states: list[tuple[float, str, str]] = []
            node.on_state_change(lambda old, new, reason: states.append((anyio.current_time(), new.value, reason)))
            async with node, calling(f"{transport}://{gateway.address}", serving=node) as calls:
                await node.wait_ready()
                await calls.success_after(anyio.current_time())

                last_frame = node._supervisor.link.last_received
                proxy.blackhole()  # sockets stay open, bytes vanish: a half-open link
                detected = await timeline.wait_for("Heartbeat timeout:", logger="easyremote.probes")
                assert detected - last_frame <= FAST["heartbeat_timeout"] * 1.1 + 0.1

                await anyio.sleep(1.0)  # stays broken a little longer
                proxy.heal()
                healed = anyio.current_time()
                await timeline.wait_for("Registered to VPS successfully", after=healed)
                served = await calls.success_after(healed)
                assert served - healed < 10.0
        lost = [(when, reason) for when, state, reason in states if state == "reconnecting"]
        assert lost and lost[0][1] == "Heartbeat timeout detected"
        assert lost[0][0] - detected < 0.1  # the state follows the detection at once
        assert calls.failures() == []


async def test_long_outage_follows_the_backoff_schedule(timeline) -> None:
    with gateway_process("grpc") as gateway:
        address = f"grpc://{gateway.address}"
        node = scenario_node(address, reconnect_interval=0.5, max_reconnect_interval=3.0)
        async with node:
            await node.wait_ready()
            killed = anyio.current_time()
            await in_thread(gateway.kill)
            # down for longer than heartbeat_timeout (2 s) and several backoff steps: 0.5, 1, 2, 3 (capped)
            await timeline.wait_for("(attempt 5/∞)", after=killed)
            await in_thread(gateway.restart)
            listening = anyio.current_time()
            registered = await timeline.wait_for("Registered to VPS successfully", after=listening)

    lines = timeline.lines(after=killed)
    announced = []
    for index, (when, line) in enumerate(lines):
        if line.startswith("Reconnecting in"):
            delay = float(line.split()[2])
            attempt = next(w for w, text in lines[index + 1:] if text == "Attempting to reconnect...")
            announced.append((delay, attempt - when))
    assert len(announced) >= 5
    for n, (delay, waited) in enumerate(announced[:4], start=1):
        nominal = min(3.0, 0.5 * 2 ** (n - 1))
        assert 0.8 * nominal - 0.05 <= delay <= min(3.0, 1.2 * nominal) + 0.05, (n, delay)
        assert abs(waited - delay) < 0.3, (n, delay, waited)  # it really waited what it announced
    assert registered - listening < 2.0  # noticed the gateway listening again, not after a long sleep


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
async def test_hung_gateway_is_detected_and_recovered_without_zombies(transport: str, timeline) -> None:
    with gateway_process(transport, heartbeat_timeout=2.0) as gateway:
        address = f"{transport}://{gateway.address}"
        node = scenario_node(address)
        async with node, calling(address, serving=node) as calls:
            await node.wait_ready()
            stopped = anyio.current_time()
            await in_thread(gateway.stop)  # SIGSTOP: the port accepts, nothing answers
            detected = await timeline.wait_for("Heartbeat timeout:", after=stopped, logger="easyremote.probes")
            assert detected - stopped <= FAST["heartbeat_timeout"] * 1.1 + 0.6
            await anyio.sleep(FAST["heartbeat_timeout"] + 1.0)  # hung for longer than heartbeat_timeout
            await in_thread(gateway.cont)
            resumed = anyio.current_time()
            await timeline.wait_for("Registered to VPS successfully", after=resumed)
            await calls.success_after(resumed)
            nodes = await calls.client.list_nodes()
        assert [(n.node_id, n.state) for n in nodes] == [("scenario-node", "ready")]  # no zombie session
        assert len(node._active_executions) == 0 and len(node._execution_tasks) == 0
        assert calls.failures() == []


async def test_exhausted_retries_stop_the_node(timeline) -> None:
    with gateway_process("grpc") as gateway:
        node = scenario_node(f"grpc://{gateway.address}", max_retry_attempts=3, reconnect_interval=0.2)
        failure: list[BaseException] = []
        async with anyio.create_task_group() as tg:
            async def serve() -> None:
                try:
                    await node.run()
                except GatewayUnavailableError as exc:
                    failure.append(exc)

            tg.start_soon(serve)
            await timeline.wait_for("Registered to VPS successfully")
            await in_thread(gateway.kill)
            with anyio.fail_after(20):
                await timeline.wait_for("Node scenario-node stopped")
        assert "gave up after 3 reconnect attempts" in str(failure[0])
        assert node.status().state == "closed"
        assert "(attempt 3/3)" in " ".join(line for _, line in timeline.lines())


class UnawareTcpTransport(TcpTransport):
    """TCP that cannot tell when a gateway is back (the ``Transport`` default ``wait_reachable``, which
    never returns): only the attempt still waiting for its answer can bring the peer back early."""

    async def wait_reachable(self, address, options) -> None:
        await anyio.sleep_forever()


#: Quick detection, a long second delay (exponential: 2 s ± 20 %, then 4 s ± 20 %), a short timeout.
HUNG = dict(heartbeat_interval=0.3, heartbeat_timeout=1.5, reconnect_interval=2.0,
            max_reconnect_interval=30.0, connection_timeout=1.0, health_check_interval=1.0,
            retry_policy="exponential")


def hung_options(transport: str) -> dict:
    return {**HUNG, "transport": UnawareTcpTransport() if transport == "tcp-unaware" else transport}


@pytest.mark.parametrize("transport", ["grpc", "tcp", "tcp-unaware"])
async def test_a_hung_gateway_that_wakes_up_is_used_at_once(transport: str, timeline) -> None:
    wire = transport.split("-")[0]
    with gateway_process(wire) as gateway:
        address = f"{wire}://{gateway.address}"
        node = scenario_node(address, **hung_options(transport))
        async with node:
            await node.wait_ready()  # before the first call: a fresh gateway may lose one that comes first
            async with calling(address, **hung_options(transport)) as calls:
                await calls.success_after(anyio.current_time())
                await hang_and_wake(gateway, timeline, calls)


async def hang_and_wake(gateway, timeline, calls) -> None:
    stopped = anyio.current_time()
    await in_thread(gateway.stop)  # SIGSTOP: the kernel still accepts connects, nothing answers
    # Both notice the loss, wait out the first delay, try again, get no answer within
    # connection_timeout and back off for the second, longer delay.
    backing_off = [await timeline.wait_for("(attempt 2/∞)", after=stopped, logger=peer)
                   for peer in ("easyremote.node", "easyremote.client")]
    await in_thread(gateway.cont)
    resumed = anyio.current_time()
    ready = await timeline.wait_for("Registered to VPS successfully", after=resumed)
    served = await calls.success_after(resumed)
    for peer in ("easyremote.node", "easyremote.client"):
        announced = [line for _, line in timeline.lines(peer, after=stopped)
                     if line.endswith("(attempt 2/∞)")]
        assert float(announced[0].split()[2]) >= 3.0, announced  # waiting it out would show
    assert max(backing_off) < resumed
    assert ready - resumed < 1.0, f"the node came back {ready - resumed:.2f} s after SIGCONT"
    assert served - resumed < 1.0, f"the first call was served {served - resumed:.2f} s after SIGCONT"
    assert calls.failures() == []


def resources() -> dict[str, int]:
    gc.collect()
    return {"tasks": len(asyncio.all_tasks()), "fds": psutil.Process().num_fds()}


async def settled_resources(at_most: int, limit: float = 3.0) -> dict[str, int]:
    """Resources once the fd count is at most ``at_most``, or as they are after ``limit`` seconds.

    gRPC core closes a closed channel's socket in its own thread, a moment after ``close()``
    returned; a socket still open after ``limit`` seconds is a leak.
    """
    with anyio.move_on_after(limit):
        while (now := resources())["fds"] > at_most:  # noqa: ASYNC110 - nothing signals it
            await anyio.sleep(0.05)
        return now
    return resources()


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
async def test_a_gateway_that_never_answers_exhausts_the_retries_and_leaks_nothing(transport: str,
                                                                                   timeline) -> None:
    with gateway_process(transport) as gateway:
        await in_thread(gateway.stop)  # it never answers, though every connect is accepted
        node = scenario_node(f"{transport}://{gateway.address}", max_retry_attempts=6, connection_timeout=0.3,
                             reconnect_interval=0.2, retry_policy="constant")
        during: list[dict[str, int]] = []  # at each failed attempt, its connection possibly still waiting
        node.on_state_change(
            lambda old, new, reason: during.append(resources()) if new.value == "reconnecting" else None)
        before = resources()
        with anyio.fail_after(30), \
                pytest.raises(GatewayUnavailableError, match="gave up after 6 reconnect attempts"):
            await node.run()
        after = await settled_resources(at_most=during[0]["fds"] if during else 0)
        gateway.cont()
    assert len([line for _, line in timeline.lines() if line.startswith("Connection error")]) == 7
    assert node.status().state == "closed"
    # One attempt (and one look at the port) at a time: nothing piles up from attempt to attempt.
    # The first sample is the reference: gRPC opens its process-wide pollers on first use.
    assert len(during) == 6 and during[-1]["fds"] <= during[0]["fds"] + 2, during
    assert during[-1]["tasks"] <= during[0]["tasks"] + 2, during
    assert after["fds"] <= during[0]["fds"] and after["tasks"] <= before["tasks"], (before, during, after)
