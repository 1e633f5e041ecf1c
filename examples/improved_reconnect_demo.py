"""A compute node with the reconnection guide's robust settings; it survives gateway restarts.

    python examples/improved_reconnect_demo.py                   # gateway at localhost:8080
    python examples/improved_reconnect_demo.py 10.0.0.5:8080     # or EASYREMOTE_GATEWAY=...

EASYREMOTE_FAST=1 shortens the timings for quick experiments and tests: heartbeats every
0.5 s (dead after 2 s), reconnect base delay 0.3 s. EASYREMOTE_NODE_ID renames the node.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import anyio

from easyremote import ComputeNode

gateway = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EASYREMOTE_GATEWAY", "localhost:8080")
timings = dict(reconnect_interval=3, max_retry_attempts=10,          # retry: 3 s, 6 s, 12 s ... (capped at 60 s)
               heartbeat_interval=5, heartbeat_timeout=15,           # dead link noticed within 15 s
               health_check_interval=30, connection_timeout=10)
if os.environ.get("EASYREMOTE_FAST") == "1":
    timings.update(reconnect_interval=0.3, heartbeat_interval=0.5, heartbeat_timeout=2,
                   health_check_interval=1, connection_timeout=3)

node = ComputeNode(vps_address=gateway, node_id=os.environ.get("EASYREMOTE_NODE_ID", "my-robust-node"), **timings)


@node.register
def add(a: int, b: int) -> int:
    """A sync function: runs in a worker thread, never blocking the heartbeats."""
    return a + b


@node.register
async def slow_square(x: float) -> float:
    """An async function: runs on the node's event loop."""
    await anyio.sleep(0.1)
    return x * x


@node.register
def countdown(n: int):
    """A generator: the client receives its items one by one."""
    yield from range(n, 0, -1)


def show_diagnostics(old, new, reason: str) -> None:
    """The guide's diagnostics, printed on every connection state change."""
    print(f"[{time.strftime('%H:%M:%S')}] state {old} -> {new}" + (f" ({reason})" if reason else ""),
          f"  connection healthy: {node._connection_healthy}",
          f"  reconnect count:    {node._reconnect_count}",
          f"  last heartbeat:     {node._last_heartbeat_time}",
          f"  active executions:  {len(node._active_executions)}",
          f"  execution tasks:    {len(node._execution_tasks)}", sep="\n", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node.on_state_change(show_diagnostics)
    print(f"Node {node.node_id} serving add, slow_square, countdown via {gateway} (Ctrl+C to stop)", flush=True)
    node.serve()  # reconnects and re-registers by itself; raises GatewayUnavailableError after 10 failed attempts
