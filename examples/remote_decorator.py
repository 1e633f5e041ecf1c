"""``@remote``: call functions on a node as if they were local ones.

    python examples/remote_decorator.py                  # gateway at localhost:8080
    python examples/remote_decorator.py 10.0.0.5:8080    # or EASYREMOTE_GATEWAY=...

Needs a gateway (examples/vps_server.py) and a node serving add, slow_square and
countdown (examples/improved_reconnect_demo.py).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator

import anyio

from easyremote import remote

GATEWAY = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EASYREMOTE_GATEWAY", "localhost:8080")


# Only the signatures matter: the bodies never run here. Each call is sent through
# the gateway to a node that registered a function of the same name.
@remote(gateway=GATEWAY)
def add(a: int, b: int) -> int: ...


@remote(gateway=GATEWAY, timeout=10)
async def slow_square(x: float) -> float:  # an async stub returns an awaitable
    ...


@remote(gateway=GATEWAY, name="countdown")
def count_down_from(n: int) -> Iterator[int]:  # a generator stub yields the remote items
    yield from ()


async def squares() -> list[float]:
    return [await slow_square(x) for x in (1, 2, 3)]


def main() -> None:
    print("add(2, 3) =", add(2, 3))
    print("slow_square(1..3) =", anyio.run(squares))
    print("countdown(3) =", list(count_down_from(3)), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
