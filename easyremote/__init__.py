"""EasyRemote: share compute. Nodes dial out to a gateway and register functions; clients call them."""

from __future__ import annotations

from easyremote_core import (
    AuthenticationError,
    CallTimeoutError,
    ConfigurationError,
    ConnectionLostError,
    EasyRemoteError,
    GatewayUnavailableError,
    NodeBusyError,
    NodeLostError,
    NoNodeAvailableError,
    PluginNotFoundError,
    ProtocolError,
    RemoteExecutionError,
    StreamingFunctionError,
)
from easyremote_core._client import AsyncClient, Client, NodeInfo
from easyremote_core._gateway import Gateway
from easyremote_core._node import ComputeNode, NodeStatus
from easyremote_core._remote import remote
from easyremote_core._supervisor import ConnectionState

from . import errors

Server = Gateway  # users of the original EasyRemote write Server(port=8080)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "CallTimeoutError",
    "Client",
    "ComputeNode",
    "ConfigurationError",
    "ConnectionLostError",
    "ConnectionState",
    "EasyRemoteError",
    "Gateway",
    "GatewayUnavailableError",
    "NoNodeAvailableError",
    "NodeBusyError",
    "NodeInfo",
    "NodeLostError",
    "NodeStatus",
    "PluginNotFoundError",
    "ProtocolError",
    "RemoteExecutionError",
    "Server",
    "StreamingFunctionError",
    "__version__",
    "errors",
    "remote",
]
