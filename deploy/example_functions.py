"""The functions the deployment examples serve: ``easyremote node example_functions.py``.

Every public function here is served (docker-compose.yml, kubernetes/nodes.yaml); put your own
module in its place.
"""

from __future__ import annotations

import socket


def add(a: int, b: int) -> int:
    return a + b


def where() -> str:
    """The host name of the node that ran the call (a container's or pod's name)."""
    return socket.gethostname()
