"""Liveness is part of the core: no plugin setting removes the heartbeat watch, and a probe that
fails ends its link instead of leaving it unwatched."""

from __future__ import annotations

import anyio
import pytest

from easyremote import AsyncClient, ComputeNode, Gateway
from easyremote.errors import EasyRemoteError
from easyremote_core import HealthProbe, LinkHealth, LinkOptions, get_plugin_manager, parse_address
from easyremote_core._protocol import PROTOCOL_VERSION, decode, encode, pb
from easyremote_core.testing.events import StateRecorder
from easyremote_core.testing.processes import GatewayProcess

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


class Crashing(HealthProbe):
    name = "crashing"

    async def watch(self, link: LinkHealth) -> None:
        await anyio.sleep(0.2)
        raise RuntimeError("this probe has a bug")


async def test_a_probe_that_raises_ends_its_link(caplog) -> None:
    async with Gateway(port=0, host="127.0.0.1", transport="tcp", startup_grace=0) as gw:
        node = ComputeNode(f"tcp://127.0.0.1:{gw.port}", "probed", health_probes=[Crashing()],
                           reconnect_interval=5, heartbeat_interval=0.5, heartbeat_timeout=2.0)
        states = StateRecorder()
        node.on_state_change(states)
        async with node:
            with anyio.fail_after(5):
                reason, _ = await states.wait_for("reconnecting")
        assert "health probe 'crashing' failed: RuntimeError: this probe has a bug" in reason


async def test_the_heartbeat_watch_is_there_even_when_not_asked_for() -> None:
    node = ComputeNode("tcp://127.0.0.1:1", "n", health_probes=[Crashing()])
    assert [probe.name for probe in node._plan.probes] == ["crashing", "heartbeat"]


@pytest.mark.parametrize("transport_name", ["grpc", "tcp"])
async def test_a_gateway_without_the_policies_plugin_still_serves_and_evicts(transport_name: str) -> None:
    env = {"EASYREMOTE_DISABLE_PLUGINS": "policies"}
    with GatewayProcess(args=("--transport", transport_name, "--heartbeat-timeout", "1"), env=env) as gw:
        gw.start()
        address = f"{transport_name}://{gw.address}"
        node = ComputeNode(address, "n1", heartbeat_interval=0.2, heartbeat_timeout=1.0)
        node.register(lambda a, b: a + b, name="add")
        async with node, AsyncClient(address, timeout=10) as client:
            await node.wait_ready()
            assert await client.execute("add", 2, 3) == 5
            # A peer that says hello and then goes silent is evicted after the heartbeat timeout.
            transport = get_plugin_manager().transport(transport_name)
            silent = await transport.connect(parse_address(gw.address), LinkOptions())
            hello = pb.Hello(protocol_version=PROTOCOL_VERSION, role=pb.ROLE_NODE, node_id="silent",
                             heartbeat_interval=0.2, heartbeat_timeout=1.0)
            await silent.send(encode(pb.Envelope(hello=hello)))
            started = anyio.current_time()
            with anyio.fail_after(10):
                assert decode(await silent.receive()).WhichOneof("body") == "welcome"
                with pytest.raises((anyio.EndOfStream, EasyRemoteError)):
                    while True:
                        await silent.receive()
            assert anyio.current_time() - started < 5
            await silent.aclose()
        gw.wait_for_line("Heartbeat timeout", 5)
        gw.close()
