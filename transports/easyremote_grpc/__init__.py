"""gRPC transport for EasyRemote (grpc.aio): keepalive, channel-state probe, health service."""

from __future__ import annotations

import os

# gRPC's C core logs connection events (GOAWAY, resets, a TLS peer name that does not match)
# to stderr; EasyRemote reports each of them itself, through logging and its errors' words.
# A user's own GRPC_VERBOSITY (DEBUG, INFO, ERROR) still wins.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from easyremote_core import hookimpl

from . import _preload  # noqa: F401  (imports grpc, before the modules below do)
from ._connection import ClientConnection, GrpcConnection, ServerConnection
from ._probe import GrpcChannelStateProbe
from ._transport import GrpcListener, GrpcTransport

__all__ = [
    "ClientConnection",
    "GrpcChannelStateProbe",
    "GrpcConnection",
    "GrpcListener",
    "GrpcTransport",
    "ServerConnection",
    "easyremote_health_probes",
    "easyremote_transports",
]


@hookimpl
def easyremote_transports() -> dict[str, type[GrpcTransport]]:
    return {"grpc": GrpcTransport}


@hookimpl
def easyremote_health_probes() -> dict[str, type[GrpcChannelStateProbe]]:
    return {"grpc-channel-state": GrpcChannelStateProbe}
