"""Many nodes returning at once: an overloaded gateway spreads them out with "retry after" notices."""

from __future__ import annotations

import logging

import anyio
import pytest

from easyremote import ComputeNode, Gateway

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_an_overloaded_gateway_tells_nodes_to_come_back_later(caplog) -> None:
    caplog.set_level(logging.INFO, logger="easyremote")
    async with Gateway(port=0, host="127.0.0.1", transport="tcp", max_handshake_rate=10,
                       startup_grace=0) as gateway:
        nodes = [ComputeNode(f"tcp://127.0.0.1:{gateway.port}", f"storm-{i}", reconnect_interval=0.5)
                 for i in range(40)]
        for node in nodes:
            node.register(lambda: "here", name="ping")
        async with anyio.create_task_group() as tg:
            for node in nodes:
                await tg.start(node.run)
            with anyio.fail_after(30):
                for node in nodes:
                    await node.wait_ready()
            assert set(gateway.nodes().values()) == {"ready"} and len(gateway.nodes()) == 40
            for node in nodes:
                node.stop()
    told = [r for r in caplog.records if r.getMessage().startswith("Gateway asked to retry after")]
    assert told, "40 nodes arriving together at a gateway admitting 10 per second: some must wait"
    # the notices are not counted as failures: nobody logged a connection error for them
    assert not any("Connection error" in r.getMessage() for r in caplog.records)
    waits = sorted(float(r.getMessage().split()[5]) for r in told)
    assert waits[-1] < 5  # 30 peers over 10 per second: spread over about 3 s, not piled up
