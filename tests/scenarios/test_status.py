"""What the counters and the last state change say, across real gateway restarts, outages and stops."""

from __future__ import annotations

import os
import signal

import anyio
import anyio.abc
import pytest

from easyremote import AsyncClient
from easyremote.errors import AuthenticationError, GatewayUnavailableError
from easyremote_core.testing.events import StateRecorder
from easyremote_core.testing.processes import GatewayProcess, PythonProcess

from .conftest import gateway_process, in_thread, scenario_node

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

#: Refused attempts every ~0.2 s while the gateway is down.
QUICK = dict(reconnect_interval=0.2, max_reconnect_interval=0.2, retry_policy="constant")


def attempts_logged(timeline, peer: str, after: float) -> int:
    return sum(line == "Attempting to reconnect..." for _, line in timeline.lines(peer, after=after))


async def test_the_counters_across_an_outage_and_two_gateway_restarts(timeline) -> None:
    with gateway_process("grpc") as gateway:
        address = f"grpc://{gateway.address}"
        node = scenario_node(address, **QUICK)
        async with node:
            await node.wait_ready()
            async with AsyncClient(address, timeout=10, **QUICK) as client:
                await client.wait_ready()
                assert await client.execute("add", 1, 2) == 3
                start = node.status()
                assert (start.reconnect_count, start.reconnect_attempts) == (0, 0)
                assert (client.reconnect_count, client.reconnect_attempts) == (0, 0)

                for restart in (1, 2):
                    killed = anyio.current_time()
                    await in_thread(gateway.kill)
                    # an outage with several failed attempts: none of them is a reconnection
                    for peer in ("easyremote.node", "easyremote.client"):
                        await timeline.wait_for("(attempt 4/∞)", after=killed, logger=peer)
                    status = node.status()
                    assert status.state == "reconnecting" and status.reconnect_count == restart - 1
                    assert status.reconnect_attempts >= 3 and client.reconnect_attempts >= 3
                    assert node._reconnect_count == restart - 1 and client.reconnect_count == restart - 1

                    await in_thread(gateway.restart)
                    with anyio.fail_after(10):
                        await node.wait_ready()
                        await client.wait_ready()
                    assert await client.execute("add", restart, 1) == restart + 1
                    assert node.status().reconnect_count == node._reconnect_count == restart
                    assert client.reconnect_count == restart

                status = node.status()
                assert status.reconnect_attempts == attempts_logged(timeline, "easyremote.node", 0)
                assert client.reconnect_attempts == attempts_logged(timeline, "easyremote.client", 0)
                assert status.reconnect_attempts >= 6


async def test_stopping_a_node_or_closing_a_client_ends_with_reason_stopped(timeline) -> None:
    with gateway_process("grpc") as gateway:
        address = f"grpc://{gateway.address}"
        node_states, client_states = StateRecorder(), StateRecorder()
        node = scenario_node(address, **QUICK)
        node.on_state_change(node_states)
        async with node:
            await node.wait_ready()
            client = AsyncClient(address, timeout=10, **QUICK)
            client.on_state_change(client_states)
            async with client:
                await client.wait_ready()
                killed = anyio.current_time()
                await in_thread(gateway.kill)  # leaves an error behind: the loss, then refused attempts
                for peer in ("easyremote.node", "easyremote.client"):
                    await timeline.wait_for("Connection error (attempt 2)", after=killed, logger=peer)
        assert client_states.last == ("closed", "stopped")
        assert node_states.last == ("closed", "stopped")
        assert node.status().state == "closed"
        assert "refused" in node.status().last_error  # the last error is still there to read


async def test_a_node_that_gives_up_ends_with_that_error() -> None:
    with gateway_process("tcp") as gateway:
        states = StateRecorder()
        node = scenario_node(f"tcp://{gateway.address}", max_retry_attempts=2, **QUICK)
        node.on_state_change(states)
        async with anyio.create_task_group() as tg:
            failure: list[BaseException] = []

            async def serve(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                try:
                    await node.run(task_status=task_status)
                except GatewayUnavailableError as exc:
                    failure.append(exc)

            await tg.start(serve)
            with anyio.fail_after(10):
                await node.wait_ready()
            await in_thread(gateway.kill)
        assert states.last == ("closed", str(failure[0]))
        assert states.last[1].startswith("gave up after 2 reconnect attempts")


async def test_a_refused_token_ends_with_the_authentication_error() -> None:
    with GatewayProcess(args=("--transport", "tcp", "--token", "right")) as gateway:
        gateway.start()
        states = StateRecorder()
        client = AsyncClient(f"tcp://{gateway.address}", auth_token="wrong", timeout=5, **QUICK)
        client.on_state_change(states)
        async with client:
            with anyio.fail_after(10), pytest.raises(AuthenticationError) as raised:
                await client.wait_ready()
        assert states.last == ("closed", str(raised.value))
        assert "stopped" not in states.last[1]


NODE_SCRIPT = """
import sys
from easyremote import ComputeNode
node = ComputeNode(sys.argv[1], "ctrl-c", reconnect_interval=0.2, max_reconnect_interval=0.2,
                   heartbeat_interval=0.3, heartbeat_timeout=1.5)
node.register(lambda: "here", name="ping")
node.on_state_change(lambda old, new, reason: print(f"state {new.value}: {reason}", flush=True))
node.serve()
"""


async def test_ctrl_c_ends_a_serving_node_with_reason_stopped() -> None:
    with gateway_process("tcp") as gateway, \
            PythonProcess(NODE_SCRIPT, args=(f"tcp://{gateway.address}",), name="ctrl-c-node") as process:
        process.start()
        await in_thread(process.wait_for_line, "state ready:", 20)
        await in_thread(gateway.kill)
        await in_thread(process.wait_for_line, "state reconnecting: ", 10)  # an error to leave behind
        os.kill(process.pid, signal.SIGINT)
        assert await in_thread(process.wait, 10) == 0
        assert [line for line in process.lines() if line.startswith("state ")][-1] == "state closed: stopped"
