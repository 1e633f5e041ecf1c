"""The gateway ("VPS server") of the reconnection guide: nodes dial in to it, clients call through it.

    python examples/vps_server.py            # listens on 0.0.0.0:8080
    python examples/vps_server.py 9000       # another port (or EASYREMOTE_PORT=9000)

EASYREMOTE_HOST sets the listening address (default 0.0.0.0; 127.0.0.1 keeps it local), and
EASYREMOTE_TOKEN a shared secret that nodes and clients must present (they read the same variable).
Stop it with Ctrl+C: connected nodes notice at once and start reconnecting.
"""

from __future__ import annotations

import logging
import os
import sys

from easyremote import Server

DEFAULT_PORT = 8080


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("EASYREMOTE_PORT", DEFAULT_PORT))
    host = os.environ.get("EASYREMOTE_HOST", "0.0.0.0")
    token = os.environ.get("EASYREMOTE_TOKEN")  # None: anyone who reaches the port may register nodes

    # Server is the original EasyRemote name of Gateway. heartbeat_timeout is how long
    # the gateway waits for word from a node before it counts the node as lost.
    server = Server(port=port, host=host, heartbeat_timeout=15, auth_token=token)

    # Logs "EasyRemote gateway listening on HOST:PORT" once bound, then blocks
    # until Ctrl+C or SIGTERM and shuts down gracefully.
    print(f"Next, in other terminals: python examples/improved_reconnect_demo.py localhost:{port}")
    print(f"                          python examples/test_reconnect_client.py --gateway localhost:{port}", flush=True)
    server.serve()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
