"""The registry: a registration beyond the gateway's bounds is refused with its reason, and the node stops."""

from __future__ import annotations

import anyio
import pytest

from easyremote import ComputeNode, Gateway
from easyremote.errors import ProtocolError

from .conftest import client_for, running_node

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def adder(node: ComputeNode) -> None:
    node.register(lambda a, b: a + b, name="add")


@pytest.mark.parametrize("transport_name", ["grpc", "tcp"])
async def test_more_functions_than_max_functions_is_refused(transport_name: str) -> None:
    async with Gateway(port=0, host="127.0.0.1", transport=transport_name, startup_grace=0, max_functions=50) as gw, \
            running_node(gw, "steady", adder), client_for(gw) as client:
        greedy = ComputeNode(f"{transport_name}://127.0.0.1:{gw.port}", "greedy", reconnect_interval=0.1)
        for i in range(51):
            greedy.register(lambda i=i: i, name=f"f{i}")
        with anyio.fail_after(10), pytest.raises(ProtocolError, match=r"51 functions are more than max_functions \(50\)"):
            await greedy.run()  # refused for good: retrying the same registration cannot help
        assert "greedy" not in gw.nodes()
        assert await client.execute("add", 2, 3) == 5


async def test_a_function_name_over_200_characters_is_refused() -> None:
    async with Gateway(port=0, host="127.0.0.1", transport="tcp", startup_grace=0) as gw:
        node = ComputeNode(f"tcp://127.0.0.1:{gw.port}", "long-names", reconnect_interval=0.1)
        node.register(lambda: 1, name="f" * 201)
        with anyio.fail_after(10), pytest.raises(ProtocolError, match="function name"):
            await node.run()
        assert gw.nodes() == {}
