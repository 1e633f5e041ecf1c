"""The blocking Client and @remote, against a real gateway and node process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import anyio
import pytest

from easyremote import Client, remote
from easyremote.errors import NoNodeAvailableError, RemoteExecutionError
from easyremote_core.testing.processes import GatewayProcess, PythonProcess

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", autouse=True)
def _one_event_loop_per_module() -> Iterator[None]:
    """This module is synchronous: no event loop of the test's own (the Client runs one).

    ``@remote`` keeps one Client per gateway for the life of the process; close them when the
    module's gateway is gone, or they go on reconnecting beside the next tests.
    """
    yield
    from easyremote_core import _remote

    with _remote._clients_lock:
        clients, _remote._clients = list(_remote._clients.values()), {}
    for client in clients:
        client.close()

NODE = """
import sys, time
from easyremote import ComputeNode
node = ComputeNode(sys.argv[1], "sync-node", heartbeat_interval=0.5, heartbeat_timeout=2)
@node.register
def add(a, b):
    return a + b
@node.register
def configure(timeout, node_id):          # parameter names the client's execute() reserves
    return f"{timeout}/{node_id}"
@node.register
def count(n):
    yield from range(n)
@node.register
def fail():
    raise LookupError("not here")
import logging; logging.basicConfig(level=logging.INFO)
node.serve()
"""


@pytest.fixture(scope="module")
def gateway_address():
    with GatewayProcess(args=("--startup-grace", "0")) as gateway:
        gateway.start()
        with PythonProcess(NODE, args=(gateway.address,), name="sync-node") as node:
            node.start()
            node.wait_for_line("Registered to VPS successfully", 30)
            yield gateway.address


def test_client_calls_streams_and_lists(gateway_address: str) -> None:
    with Client(gateway_address, timeout=10) as client:
        assert client.execute("add", 1, 2) == 3
        assert client.execute("add", a=4, b=5) == 9
        assert list(client.stream("count", 4)) == [0, 1, 2, 3]
        assert client.call("configure", kwargs={"timeout": 7, "node_id": "x"}) == "7/x"
        assert [n.node_id for n in client.list_nodes()] == ["sync-node"]
        with pytest.raises(RemoteExecutionError, match="LookupError: not here"):
            client.execute("fail")
        with pytest.raises(NoNodeAvailableError):
            client.execute("add", 1, 2, node_id="elsewhere")


def test_a_stream_abandoned_half_way_leaves_the_client_usable(gateway_address: str) -> None:
    with Client(gateway_address, timeout=10) as client:
        for item in client.stream("count", 100):
            if item == 3:
                break
        assert client.execute("add", 1, 1) == 2


def test_remote_stubs(gateway_address: str) -> None:
    @remote(gateway=gateway_address)
    def add(a: int, b: int) -> int: ...

    @remote(gateway=gateway_address, name="add")
    async def add_async(a: int, b: int) -> int: ...

    @remote(gateway=gateway_address)
    def count(n: int): yield  # noqa: E704 - the body never runs

    assert add(2, 3) == 5
    assert anyio.run(add_async, 4, 5) == 9
    assert list(count(3)) == [0, 1, 2]


def test_a_program_that_never_closes_its_client_still_exits(gateway_address: str) -> None:
    code = f"""
from easyremote import Client, remote
client = Client({gateway_address!r})
print(client.execute("add", 1, 2))
@remote(gateway={gateway_address!r})
def add(a, b): ...
print(add(3, 4))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "7"]


def test_remote_needs_a_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    from easyremote.errors import ConfigurationError

    monkeypatch.delenv("EASYREMOTE_GATEWAY", raising=False)
    with pytest.raises(ConfigurationError, match="EASYREMOTE_GATEWAY"):
        @remote
        def nowhere() -> None: ...
