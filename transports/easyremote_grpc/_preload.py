"""gRPC core's settings that only its environment carries: it reads them once, when grpc is first
imported, so this module imports grpc (as the package's first import of it)."""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

#: What ``GRPC_EXPERIMENTS`` says when the user sets nothing: TCP connections dialled and
#: accepted through iomgr, not through EventEngine. An EventEngine endpoint hands each message
#: read from a socket across two of its threads before grpc.aio's poller thread gets it; an
#: iomgr endpoint is read by that poller thread itself (benchmarks/README.md has the figures).
EXPERIMENTS = "-event_engine_client,-event_engine_listener"
_VARIABLE = "GRPC_EXPERIMENTS"


def import_grpc(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Import grpc, seeing :data:`EXPERIMENTS`; ``True`` if it did.

    Nothing changes when the user set ``GRPC_EXPERIMENTS`` (even empty), when grpc is already
    imported (its core has read its settings), or off Linux (measured there only). The variable
    is set for the import only: child processes see the environment they would have seen.
    """
    if _VARIABLE in environ or "grpc._cython.cygrpc" in sys.modules or not sys.platform.startswith("linux"):
        return False
    environ[_VARIABLE] = EXPERIMENTS
    try:
        import grpc  # noqa: F401  (gRPC core reads GRPC_EXPERIMENTS here)
    finally:
        del environ[_VARIABLE]
    return True


import_grpc()
