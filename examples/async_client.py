"""``AsyncClient``: call remote functions from async code, many at once.

    python examples/async_client.py                  # gateway at localhost:8080
    python examples/async_client.py 10.0.0.5:8080    # or EASYREMOTE_GATEWAY=...

Needs a gateway (examples/vps_server.py) and a node serving add, slow_square and
countdown (examples/improved_reconnect_demo.py).
"""

from __future__ import annotations

import logging
import os
import sys

import anyio

from easyremote import AsyncClient, EasyRemoteError

GATEWAY = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EASYREMOTE_GATEWAY", "localhost:8080")


async def main() -> None:
    # The client connects in the background and reconnects by itself; a call made while
    # the gateway or the node is away waits for them, up to its timeout.
    async with AsyncClient(GATEWAY, timeout=10) as client:
        for node in await client.list_nodes():
            print(f"node {node.node_id} ({node.state}) serves {', '.join(node.functions)}")

        print("add(2, 3) =", await client.execute("add", 2, 3))

        # Ten calls at once: each is a separate request, answered as its node finishes it.
        results: dict[int, float] = {}

        async def square(x: int) -> None:
            results[x] = await client.execute("slow_square", x)

        async with anyio.create_task_group() as tg:
            for x in range(10):
                tg.start_soon(square, x)
        print("slow_square(0..9) =", [results[x] for x in range(10)])

        print("countdown(3) =", [item async for item in client.stream("countdown", 3)])

        # A function no node serves fails (at once, or after `timeout` while a freshly
        # restarted gateway still waits for its nodes to come back).
        try:
            await client.execute("no_such_function", timeout=2)
        except EasyRemoteError as exc:  # every EasyRemote failure derives from EasyRemoteError
            print(f"no_such_function failed as expected: {type(exc).__name__}", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    anyio.run(main)
