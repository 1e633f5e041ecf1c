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
        refused = r"51 functions are more than max_functions \(50\)"
        with anyio.fail_after(10), pytest.raises(ProtocolError, match=refused):
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


async def test_node_lists_come_in_pages_and_the_client_reads_them_all(monkeypatch: pytest.MonkeyPatch) -> None:
    from easyremote_core._gateway import _registry
    from easyremote_core._protocol import pb

    monkeypatch.setattr(_registry, "PAGE_SIZE", 2)
    monkeypatch.setattr(_registry, "MAX_PAGE_SIZE", 3)
    async with Gateway(port=0, host="127.0.0.1", transport="memory", startup_grace=0) as gw:
        async with running_node(gw, "n1", adder), running_node(gw, "n2", adder), running_node(gw, "n3", adder), \
                running_node(gw, "n4", adder), running_node(gw, "n5", adder), client_for(gw) as client:
            assert [info.node_id for info in await client.list_nodes()] == ["n1", "n2", "n3", "n4", "n5"]
            first = gw._registry.node_list(pb.ListNodes())
            assert [n.node_id for n in first.nodes] == ["n1", "n2"] and first.next_page_token == "n2"
            greedy = gw._registry.node_list(pb.ListNodes(page_size=1_000_000, page_token="n1"))
            assert [n.node_id for n in greedy.nodes] == ["n2", "n3", "n4"]  # capped at MAX_PAGE_SIZE
            last = gw._registry.node_list(pb.ListNodes(page_token="n4"))
            assert [n.node_id for n in last.nodes] == ["n5"] and last.next_page_token == ""


async def test_a_stopping_gateway_closes_its_transports_after_their_listeners() -> None:
    from easyremote_core.testing.memory import MemoryTransport

    order: list[str] = []

    class Recording(MemoryTransport):
        async def listen(self, host, port, options):  # type: ignore[no-untyped-def]
            listener = await super().listen(host, port, options)
            close = listener.aclose

            async def aclose() -> None:
                order.append("listener")
                await close()

            listener.aclose = aclose  # type: ignore[method-assign]
            return listener

        async def aclose(self) -> None:
            order.append("transport")

    async with Gateway(port=0, host="127.0.0.1", transport=Recording(), startup_grace=0):
        pass
    assert order[0] == "listener" and "transport" in order and order.index("transport") > 0
