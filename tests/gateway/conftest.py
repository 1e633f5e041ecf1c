"""Fixtures that run a real gateway, nodes and clients in the test's event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from easyremote import AsyncClient, ComputeNode, Gateway

TRANSPORTS = ["memory", "tcp", "grpc"]


@pytest.fixture(params=TRANSPORTS)
def transport_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def gateway(transport_name: str) -> AsyncIterator[Gateway]:
    # startup_grace=0: these tests look at a gateway in its steady state, where a call for a
    # function nobody registered fails at once (test_startup_grace covers a fresh gateway).
    async with Gateway(port=0, host="127.0.0.1", transport=transport_name, heartbeat_timeout=3.0,
                       startup_grace=0) as gw:
        yield gw


def address(gw: Gateway) -> str:
    return f"{gw.transport_name}://127.0.0.1:{gw.port}"


@asynccontextmanager
async def running_node(gw: Gateway, node_id: str, setup: Callable[[ComputeNode], Any] | None = None,
                       **options: Any) -> AsyncIterator[ComputeNode]:
    """A node connected and registered with ``gw``; ``setup(node)`` registers its functions."""
    options.setdefault("heartbeat_interval", 0.5)
    options.setdefault("heartbeat_timeout", 2.0)
    options.setdefault("reconnect_interval", 0.2)
    node = ComputeNode(address(gw), node_id, **options)
    if setup is not None:
        setup(node)
    async with node:
        await node.wait_ready()
        yield node


@asynccontextmanager
async def client_for(gw: Gateway, **options: Any) -> AsyncIterator[AsyncClient]:
    options.setdefault("timeout", 10.0)
    options.setdefault("reconnect_interval", 0.2)
    async with AsyncClient(address(gw), **options) as client:
        await client.wait_ready()
        yield client


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
async def _one_event_loop_per_module(anyio_backend: str) -> AsyncIterator[None]:
    """Holding this fixture keeps one event loop for the whole module. grpc.aio finishes
    cancelled operations on the loop that started them; with a new loop per test they land
    on a closed one ("Event loop is closed")."""
    yield
