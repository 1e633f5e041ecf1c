"""The transport-neutral core of EasyRemote: interfaces, protocol, plugins, gateway, node and client."""

from __future__ import annotations

from ._address import Address, parse_address
from ._connection import Connection, ConnectionAttribute, ConnectionHandler
from ._errors import (
    AuthenticationError,
    CallTimeoutError,
    ConfigurationError,
    ConnectionLostError,
    EasyRemoteError,
    GatewayUnavailableError,
    MessageTooLargeError,
    NodeBusyError,
    NodeLostError,
    NoNodeAvailableError,
    PluginNotFoundError,
    ProtocolError,
    RemoteExecutionError,
    StreamingFunctionError,
)
from ._heartbeat import HeartbeatProbe
from ._plugins import PluginEntry, PluginManager, get_plugin_manager, reset_plugin_manager
from ._probes import HealthProbe, LinkDead, LinkHealth
from ._protocol import PROTOCOL_VERSION
from ._reachability import wait_until_listening
from ._retry import RetryPolicy
from ._routing import NodeLoad, RoutingPolicy
from ._transport import LinkOptions, Listener, TLSConfig, Transport
from .hookspecs import hookimpl

__all__ = [
    "Address",
    "AuthenticationError",
    "CallTimeoutError",
    "ConfigurationError",
    "Connection",
    "ConnectionAttribute",
    "ConnectionHandler",
    "ConnectionLostError",
    "EasyRemoteError",
    "GatewayUnavailableError",
    "HealthProbe",
    "HeartbeatProbe",
    "LinkDead",
    "LinkHealth",
    "LinkOptions",
    "Listener",
    "MessageTooLargeError",
    "NoNodeAvailableError",
    "NodeBusyError",
    "NodeLoad",
    "NodeLostError",
    "PROTOCOL_VERSION",
    "PluginEntry",
    "PluginManager",
    "PluginNotFoundError",
    "ProtocolError",
    "RemoteExecutionError",
    "RetryPolicy",
    "RoutingPolicy",
    "StreamingFunctionError",
    "TLSConfig",
    "Transport",
    "get_plugin_manager",
    "hookimpl",
    "parse_address",
    "reset_plugin_manager",
    "wait_until_listening",
]
