"""gRPC transport for EasyRemote (grpc.aio): keepalive, channel-state probe, health service."""

from __future__ import annotations

from easyremote_core import hookimpl

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
