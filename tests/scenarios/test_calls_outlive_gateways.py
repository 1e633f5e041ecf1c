"""A call that must not run twice outlives the gateway that carried it: its node keeps it and
answers it through whichever gateway its caller reaches next (SPEC §8). Real gateway processes,
real SIGKILL."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import pytest

from easyremote import AsyncClient, ComputeNode
from easyremote.errors import NodeLostError
from easyremote_core._supervisor import ConnectionState
from easyremote_core.testing.chaos import ChaosProxy
from easyremote_core.testing.processes import PythonProcess

from .conftest import FAST, gateway_process, in_thread

pytestmark = pytest.mark.timeout(90)

CALL_SECONDS = 3.0


class Charges:
    """A non-idempotent function that takes CALL_SECONDS: each run is counted, and when it finished."""

    def __init__(self) -> None:
        self.runs = 0
        self.finished_at: float | None = None  # wall clock
        self.running = anyio.Event()
        self.finished = anyio.Event()

    def node(self, address: str, node_id: str = "charging-node", **options: Any) -> ComputeNode:
        node = ComputeNode(address, node_id, **{**FAST, **options})

        @node.register
        async def charge(amount: int) -> str:
            self.runs += 1
            self.running.set()
            await anyio.sleep(CALL_SECONDS)
            self.finished_at = time.time()
            self.finished.set()
            return f"charged {amount}"

        return node


async def _all_linked(peer: Any) -> None:
    """Until every gateway link of a node or client is ready."""
    gateways = peer._supervisor
    while not all(s.state is ConnectionState.READY for s in gateways.supervisors):
        await gateways.wait_changed()


def _returned_once(outcome: dict[str, Any], charges: Charges) -> None:
    """The call returned its result, with no error, within 1 s of its one run finishing."""
    assert "error" not in outcome, outcome
    assert outcome["value"] == "charged 7"
    assert charges.runs == 1
    assert charges.finished_at is not None and outcome["at"] - charges.finished_at < 1.0


async def _running(tg: anyio.abc.TaskGroup, client: AsyncClient, charges: Charges) -> dict[str, Any]:
    """charge(7) started in ``tg``, once the function runs; its outcome is filled in when it ends."""
    outcome: dict[str, Any] = {}
    tg.start_soon(_call, client, outcome)
    with anyio.fail_after(10):
        await charges.running.wait()
    return outcome


async def _call(client: AsyncClient, outcome: dict[str, Any]) -> None:
    try:
        outcome["value"] = await client.execute("charge", 7)
    except Exception as exc:
        outcome["error"] = exc
    outcome["at"] = time.time()


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
async def test_a_call_returns_through_the_other_gateway_when_its_gateway_is_killed(transport: str) -> None:
    with gateway_process(transport) as first, gateway_process(transport) as second:
        addresses = f"{transport}://{first.address},{transport}://{second.address}"
        charges = Charges()
        async with charges.node(addresses) as node, AsyncClient(addresses, timeout=30, **FAST) as client:
            await _all_linked(node)
            await _all_linked(client)
            async with anyio.create_task_group() as tg:
                outcome = await _running(tg, client, charges)
                carrying = client._current
                assert carrying is not None
                gateway = first if str(carrying.address) == first.address else second
                await in_thread(gateway.kill)  # SIGKILL: its call table dies with it
        _returned_once(outcome, charges)


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
async def test_a_call_returns_after_its_only_gateway_restarts(transport: str) -> None:
    with gateway_process(transport) as gateway:
        address = f"{transport}://{gateway.address}"
        charges = Charges()
        async with charges.node(address) as node, AsyncClient(address, timeout=30, **FAST) as client:
            await node.wait_ready()
            await client.wait_ready()
            async with anyio.create_task_group() as tg:
                outcome = await _running(tg, client, charges)
                await in_thread(gateway.restart)  # SIGKILL, then a fresh gateway on the same port
        _returned_once(outcome, charges)


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
async def test_a_node_that_keeps_no_answers_does_not_run_a_finished_call_again(transport: str) -> None:
    """With result_retention=0 the node keeps no answers: a call that finished while its only
    gateway was down, asked for again once it is back, cannot be answered and must not run again;
    the caller hears it may or may not have run."""
    with gateway_process(transport) as gateway:
        address = f"{transport}://{gateway.address}"
        charges = Charges()
        async with charges.node(address, result_retention=0) as node, \
                AsyncClient(address, timeout=30, **FAST) as client:
            await node.wait_ready()
            await client.wait_ready()
            async with anyio.create_task_group() as tg:
                outcome = await _running(tg, client, charges)
                await in_thread(gateway.kill)
                with anyio.fail_after(CALL_SECONDS + 5):
                    await charges.finished.wait()  # it finished with nobody to answer to
                await in_thread(gateway.start)
        assert isinstance(outcome.get("error"), NodeLostError), outcome
        assert "result_retention=0" in str(outcome["error"])
        assert charges.runs == 1


NODE = """
import sys, anyio
from easyremote import ComputeNode

node = ComputeNode(sys.argv[1], "doomed-node", heartbeat_interval=0.5, heartbeat_timeout=2.0,
                   reconnect_interval=0.5)

@node.register
async def charge(amount: int) -> str:
    print("running", flush=True)
    await anyio.sleep(30)
    return "charged"

node.serve()
"""


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
async def test_when_the_node_itself_dies_the_caller_hears_it_may_or_may_not_have_run(transport: str) -> None:
    with gateway_process(transport) as first, gateway_process(transport) as second:
        addresses = f"{transport}://{first.address},{transport}://{second.address}"
        with PythonProcess(NODE, args=(addresses,), name="node") as node:
            node.start()
            async with AsyncClient(addresses, timeout=30, **FAST) as client:
                await _all_linked(client)
                await in_thread(functools.partial(node.wait_for_line, "Registered to VPS successfully", 20.0, count=2))
                outcome: dict[str, Any] = {}
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_call, client, outcome)
                    await in_thread(node.wait_for_line, "running", 20.0)
                    killed = time.time()
                    await in_thread(node.kill)
        assert isinstance(outcome.get("error"), NodeLostError), outcome
        assert "may or may not have run" in str(outcome["error"])
        assert outcome["at"] - killed < 1.0


async def _a_call_through_a_faulty_path(transport: str, fault: Callable[[ChaosProxy], Awaitable[None]],
                                       heartbeat_timeout: float = 2.0) -> None:
    """A non-idempotent call on a node that reaches the only gateway through a proxy, ``fault``
    applied to the proxy while the call runs: it returns, from its one run, with no error."""
    with gateway_process(transport, heartbeat_timeout=heartbeat_timeout) as gateway:
        async with ChaosProxy(gateway.port) as path:
            charges = Charges()
            async with charges.node(f"{transport}://{path.address}") as node, \
                    AsyncClient(f"{transport}://{gateway.address}", timeout=30, **FAST) as client:
                await node.wait_ready()
                await client.wait_ready()
                async with anyio.create_task_group() as tg:
                    outcome = await _running(tg, client, charges)
                    await fault(path)
        _returned_once(outcome, charges)


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
async def test_a_call_waits_for_its_node_when_the_node_went_silent(transport: str) -> None:
    """The node's link goes silent (a black hole, not a death): the gateway declares it lost at its
    heartbeat timeout, but the node may still be running the call; it waits for the node's same run
    to come back and takes the answer from it."""

    async def silence(path: ChaosProxy) -> None:
        path.blackhole()  # both ends time out: the gateway after 1 s, the node after 2 s
        await anyio.sleep(2.5)
        path.heal()

    await _a_call_through_a_faulty_path(transport, silence, heartbeat_timeout=1.0)


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
async def test_a_call_whose_node_link_is_reset_returns_through_the_gateway_the_node_still_has(
        transport: str) -> None:
    """The node's link to the carrying gateway is reset (a proxy's RST, as when a black hole heals
    after the node gave up on the link): that gateway says the call was lost, but the node lives,
    linked to the other gateway; asked there, it gives the call's answer, from its one run."""
    with gateway_process(transport) as first, gateway_process(transport) as second:
        async with ChaosProxy(first.port) as path:
            charges = Charges()
            node_addresses = f"{transport}://{path.address},{transport}://{second.address}"
            addresses = f"{transport}://{first.address},{transport}://{second.address}"
            async with charges.node(node_addresses) as node, AsyncClient(addresses, timeout=30, **FAST) as client:
                await _all_linked(node)
                await _all_linked(client)
                assert client._ready_link() is not None and str(client._current.address) == first.address
                async with anyio.create_task_group() as tg:
                    outcome = await _running(tg, client, charges)
                    await path.reset()  # the first gateway sees the node's link close, not go silent
        _returned_once(outcome, charges)


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
async def test_a_call_waits_for_its_node_when_the_link_closed_after_a_silence(transport: str) -> None:
    """The node's link goes quiet for two heartbeat intervals, less than any heartbeat timeout, then
    is reset (a short black hole that healed, and the proxy could not mend the stream): the only
    gateway cannot tell this from a death by the close, but it can by the silence before it. It
    waits for the node's same run, which comes back and answers from its one run."""

    async def quiet_then_reset(path: ChaosProxy) -> None:
        path.blackhole()
        await anyio.sleep(2 * FAST["heartbeat_interval"])
        await path.reset()
        path.heal()

    await _a_call_through_a_faulty_path(transport, quiet_then_reset)


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
async def test_a_call_sent_into_a_frozen_gateway_runs_once_through_the_other(transport: str) -> None:
    """The client's gateway freezes (SIGSTOP) just before the call: it never routes it, and the client
    never hears where it went. Asked again through the other gateway, the nodes there are asked
    whether they have it; none has, so it runs, once, even after the frozen gateway wakes up and
    forwards its stale copy (to either node: each refuses it once asked about it)."""
    with gateway_process(transport) as first, gateway_process(transport) as second:
        addresses = f"{transport}://{first.address},{transport}://{second.address}"
        charges = Charges()
        async with charges.node(addresses) as node, charges.node(addresses, "other-node") as other, \
                AsyncClient(addresses, timeout=30, **FAST) as client:
            await _all_linked(node)
            await _all_linked(other)
            await _all_linked(client)
            assert await client.execute("charge", 1) == "charged 1"  # the client now goes through one of them
            carrying = client._current
            assert carrying is not None
            frozen = first if str(carrying.address) == first.address else second
            await in_thread(frozen.stop)
            try:
                assert await client.execute("charge", 2) == "charged 2"
            finally:
                await in_thread(frozen.cont)
            with anyio.fail_after(10):
                await _all_linked(node)  # back on the woken gateway, which had the stale copy
                await _all_linked(other)
            assert await client.execute("charge", 3) == "charged 3"
        assert charges.runs == 3  # 1, 2 and 3, each once


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
async def test_a_call_sent_into_a_gateway_that_then_restarts_runs_once(transport: str) -> None:
    """The only gateway freezes, takes the call, and is killed and restarted before it routed it:
    the restarted gateway (its state file knows the node) waits for the node, asks it, and runs
    the call, once."""
    with gateway_process(transport) as gateway:
        address = f"{transport}://{gateway.address}"
        charges = Charges()
        async with charges.node(address) as node, AsyncClient(address, timeout=30, **FAST) as client:
            await node.wait_ready()
            assert await client.execute("charge", 1) == "charged 1"
            await in_thread(gateway.stop)
            outcome: dict[str, Any] = {}
            async with anyio.create_task_group() as tg:
                tg.start_soon(_call, client, outcome)
                await anyio.sleep(0.3)  # the call is in the frozen gateway's socket
                await in_thread(gateway.restart)
        assert "error" not in outcome, outcome
        assert outcome["value"] == "charged 7"
        assert charges.runs == 2
