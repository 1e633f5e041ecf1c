"""TCP transport for EasyRemote: length-prefixed envelope frames over anyio streams, optional TLS."""

from __future__ import annotations

from easyremote_core import Transport, hookimpl

from ._transport import SocketTuning, TcpConnection, TcpListener, TcpTransport

__all__ = ["SocketTuning", "TcpConnection", "TcpListener", "TcpTransport"]


@hookimpl
def easyremote_transports() -> dict[str, type[Transport]]:
    return {"tcp": TcpTransport}
