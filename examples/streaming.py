"""Streaming: a generator registered on a node hands its items to the client one by one.

    python examples/streaming.py                  # gateway at localhost:8080
    python examples/streaming.py 10.0.0.5:8080    # or EASYREMOTE_GATEWAY=...

Needs only a gateway (examples/vps_server.py): this script runs the node and the client.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator

import anyio

from easyremote import AsyncClient, ComputeNode

GATEWAY = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EASYREMOTE_GATEWAY", "localhost:8080")

node = ComputeNode(GATEWAY, "streaming-node")


@node.register
def read_lines(n: int) -> Iterator[str]:
    """A sync generator: runs in a worker thread; each item is sent as soon as it is yielded."""
    for i in range(n):
        time.sleep(0.05)  # blocking work is fine here
        yield f"line {i}"


@node.register
async def ticks(n: int, every: float = 0.05) -> AsyncIterator[int]:
    """An async generator: runs on the node's event loop."""
    for i in range(n):
        await anyio.sleep(every)
        yield i


async def main() -> None:
    async with node:  # serve the node in the background of this script
        await node.wait_ready()
        async with AsyncClient(GATEWAY) as client:
            async for line in client.stream("read_lines", 3):
                print("read_lines:", line)
            print("ticks:", [tick async for tick in client.stream("ticks", 5)], flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    anyio.run(main)
