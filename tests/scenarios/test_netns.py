"""A half-open link made by iptables inside a network namespace: the node notices and comes back."""

from __future__ import annotations

import sys
import time

import pytest

from easyremote_core.testing.processes import GatewayProcess, PythonProcess

from ..harness.netns import NetNamespace, netns_available

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(90),
    pytest.mark.skipif(not netns_available(), reason="needs root, ip, iptables and network namespaces"),
]

NODE = """
import logging, sys
from easyremote import ComputeNode
logging.basicConfig(level=logging.INFO, format="%(created).3f %(name)s %(levelname)s %(message)s")
node = ComputeNode(sys.argv[1], "netns-node", heartbeat_interval=0.5, heartbeat_timeout=2.0,
                   reconnect_interval=0.5, max_reconnect_interval=2.0, connection_timeout=2.0)
node.register(lambda a, b: a + b, name="add")
node.serve()
"""


def stamp(line: str) -> float:
    return float(line.split()[0])


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
def test_packets_dropped_by_iptables_are_detected_and_recovered(transport: str) -> None:
    with NetNamespace() as namespace:
        with GatewayProcess(args=("--transport", transport, "--heartbeat-timeout", "2"),
                            prefix=namespace.exec_prefix) as gateway:
            gateway.start()
            address = f"{transport}://{gateway.address}"
            with PythonProcess(NODE, args=(address,), prefix=namespace.exec_prefix, name="netns-node") as node:
                node.start()
                node.wait_for_line("Registered to VPS successfully", 30)
                dropped = time.time()
                namespace.drop_port(gateway.port)  # every packet to and from the gateway vanishes
                warning = node.wait_for_line("Heartbeat timeout:", 10)
                assert stamp(warning) - dropped <= 2.0 * 1.1 + 0.6  # heartbeat_timeout (+10 %) after the last frame
                node.wait_for_line("Connection error (attempt 1): Heartbeat timeout detected", 10)
                node.wait_for_line("Reconnecting in", 10)

                namespace.restore()
                restored = time.time()
                registered = node.wait_for_line("Registered to VPS successfully", 30, count=2)
                assert stamp(registered) - restored < 10
                result = namespace.run(sys.executable, "-m", "easyremote", "call", "--gateway", address,
                                       "add", "2", "3", check=False)
                assert result.returncode == 0, result.stderr
                assert result.stdout.strip() == "5"
