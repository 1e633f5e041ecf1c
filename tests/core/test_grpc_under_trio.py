"""gRPC's grpc.aio runs on asyncio only: under trio it is a clear ConfigurationError, not a hang."""

from __future__ import annotations

import anyio
import pytest

from easyremote import AsyncClient, ComputeNode, Gateway
from easyremote.errors import ConfigurationError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "trio"


async def test_grpc_under_trio_is_a_clear_configuration_error() -> None:
    gateway = Gateway(port=0, host="127.0.0.1", transport="grpc")
    with pytest.raises(ConfigurationError, match="asyncio") as caught:
        await gateway.start()
    assert "trio" in str(caught.value) and "tcp" in str(caught.value)

    node = ComputeNode("grpc://127.0.0.1:1", "n1", reconnect_interval=0.2)
    with anyio.fail_after(10), pytest.raises(ConfigurationError, match="asyncio"):
        await node.run()


async def test_grpc_client_under_trio_reports_the_configuration_error() -> None:
    async with AsyncClient("grpc://127.0.0.1:1", timeout=5.0, reconnect_interval=0.2) as client:
        with anyio.fail_after(10), pytest.raises(ConfigurationError, match="asyncio"):
            await client.execute("add", 1, 2)
