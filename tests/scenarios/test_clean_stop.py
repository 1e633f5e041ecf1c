"""A node that is stopped (Ctrl+C, SIGTERM, ``node.stop()``) leaves in order: it finishes what it
runs, says goodbye, and the gateway reads that as leaving, not as a lost node. Real processes."""

from __future__ import annotations

import signal
import textwrap
import time

import anyio
import pytest

from easyremote import AsyncClient, ComputeNode, Gateway
from easyremote_core.testing.processes import GatewayProcess, PythonProcess

from .conftest import in_thread

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

NODE = textwrap.dedent("""
    import sys, time
    from easyremote import ComputeNode

    node = ComputeNode(sys.argv[1], "stopping-node", heartbeat_interval=0.5, heartbeat_timeout=2.0,
                       drain_timeout=float(sys.argv[2]))

    @node.register
    def slow(seconds):
        print("slow started", flush=True)
        time.sleep(seconds)
        return seconds

    node.serve()
    print("serve returned", flush=True)
""")


@pytest.fixture(params=["grpc", "tcp"])
def gateway(request: pytest.FixtureRequest):
    with GatewayProcess(args=("--transport", request.param, "--startup-grace", "0")) as gw:
        gw.start()
        gw.transport = request.param
        yield gw
        gw.close()


def _node(gateway: GatewayProcess, drain_timeout: float = 10.0) -> PythonProcess:
    node = PythonProcess(NODE, args=(f"{gateway.transport}://{gateway.address}", str(drain_timeout)),
                         name="node")
    node.start()
    node.wait_for_line("Registered to VPS successfully", 20)  # INFO lines show with no logging set up
    gateway.wait_for_line("Node stopping-node registered", 10)
    return node


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_first_signal_waits_for_running_calls_then_the_node_leaves(gateway: GatewayProcess, signum) -> None:
    node = _node(gateway)
    try:
        results: list[object] = []

        async with AsyncClient(f"{gateway.transport}://{gateway.address}", timeout=20) as client:
            async with anyio.create_task_group() as tg:
                async def call() -> None:
                    results.append(await client.execute("slow", 1.5))

                tg.start_soon(call)
                await in_thread(node.wait_for_line, "slow started", 10)
                node._signal(signum)
                await in_thread(node.wait_for_line, "waiting for 1 running call(s)", 5)
                await in_thread(gateway.wait_for_line, "Node stopping-node is leaving", 5)

        assert results == [1.5]  # the running call finished and its answer arrived
        assert node.wait(10) == 0
        assert "serve returned" in node.log_text()
        assert "Traceback" not in node.log_text()
        gateway.wait_for_line("Node stopping-node left (stopped)", 5)
        assert "Node stopping-node lost" not in gateway.log_text()
        assert "WARNING" not in "\n".join(line for line in gateway.lines() if "stopping-node" in line)
    finally:
        node.close()


async def test_a_second_ctrl_c_exits_at_once_without_a_traceback(gateway: GatewayProcess) -> None:
    node = _node(gateway)
    try:
        async with AsyncClient(f"{gateway.transport}://{gateway.address}", timeout=30) as client:
            async with anyio.create_task_group() as tg:
                async def call() -> None:
                    try:
                        await client.execute("slow", 30)
                    except Exception:
                        pass  # the node is gone: NodeLostError

                tg.start_soon(call)
                await in_thread(node.wait_for_line, "slow started", 10)
                node._signal(signal.SIGINT)
                await in_thread(node.wait_for_line, "waiting for 1 running call(s)", 5)
                started = time.monotonic()
                node._signal(signal.SIGINT)
                code = await in_thread(node.wait, 10.0)
                assert time.monotonic() - started < 3, "the second Ctrl+C did not exit at once"
                assert code == 130
                tg.cancel_scope.cancel()

        assert "Traceback" not in node.log_text()
        assert "abandoning 1 call(s)" in node.log_text()
    finally:
        node.close()


async def test_the_drain_timeout_bounds_the_wait(gateway: GatewayProcess) -> None:
    node = _node(gateway, drain_timeout=0.5)
    try:
        outcome: list[str] = []

        async with AsyncClient(f"{gateway.transport}://{gateway.address}", timeout=30) as client:
            async with anyio.create_task_group() as tg:
                async def call() -> None:
                    try:
                        await client.execute("slow", 30)
                    except Exception as exc:
                        outcome.append(type(exc).__name__)

                tg.start_soon(call)
                await in_thread(node.wait_for_line, "slow started", 10)
                node._signal(signal.SIGTERM)
                await in_thread(node.wait_for_line, "after drain_timeout", 5)

        assert outcome == ["NodeLostError"]  # the caller learns it may or may not have run
        gateway.wait_for_line("Node stopping-node left (stopped)", 5)
    finally:
        node.close()


@pytest.mark.parametrize("transport", ["memory", "tcp", "grpc"])
async def test_node_stop_is_a_goodbye_not_a_loss(transport: str, caplog: pytest.LogCaptureFixture) -> None:
    async with Gateway(port=0, host="127.0.0.1", transport=transport, startup_grace=0) as gw:
        address = f"{transport}://127.0.0.1:{gw.port}"
        node = ComputeNode(address, "polite", heartbeat_interval=0.5, heartbeat_timeout=2.0)
        changes: list[tuple[str, str]] = []
        node.on_state_change(lambda old, new, reason: changes.append((new.value, reason)))

        @node.register
        async def echo(x: int) -> int:
            return x

        async with anyio.create_task_group() as tg:
            await tg.start(node.run)
            await node.wait_ready()
            async with AsyncClient(address, timeout=5) as client:
                assert await client.execute("echo", 4) == 4
                node.stop()
                with anyio.fail_after(5):
                    while "polite" in gw.nodes():  # noqa: ASYNC110 - nothing signals it
                        await anyio.sleep(0.02)
                # Gone at once, not "reconnecting" for a grace period: calls fail fast.
                with pytest.raises(Exception, match="no node serves 'echo'"):
                    await client.execute("echo", 1)
        assert changes[-1] == ("closed", "stopped")
        assert ("reconnecting", "peer closed the connection") not in changes
        gateway_lines = [r for r in caplog.records if r.name == "easyremote.gateway" and "polite" in r.getMessage()]
        assert any(r.getMessage() == "Node polite left (stopped)" and r.levelname == "INFO" for r in gateway_lines)
        assert not any(r.levelname == "WARNING" for r in gateway_lines)
