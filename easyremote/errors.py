"""The errors EasyRemote raises; every one is an :class:`EasyRemoteError`."""

from __future__ import annotations

from easyremote_core._errors import (
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

__all__ = [
    "AuthenticationError",
    "CallTimeoutError",
    "ConfigurationError",
    "ConnectionLostError",
    "EasyRemoteError",
    "GatewayUnavailableError",
    "MessageTooLargeError",
    "NoNodeAvailableError",
    "NodeBusyError",
    "NodeLostError",
    "PluginNotFoundError",
    "ProtocolError",
    "RemoteExecutionError",
    "StreamingFunctionError",
]
