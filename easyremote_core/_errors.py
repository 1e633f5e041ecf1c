"""Every error EasyRemote raises; all derive from :class:`EasyRemoteError`."""

from __future__ import annotations


class EasyRemoteError(Exception):
    """Base of every EasyRemote error."""


class ConfigurationError(EasyRemoteError, ValueError):
    """A parameter has an invalid value; the message names the parameter and the rule."""


class PluginNotFoundError(EasyRemoteError, LookupError):
    """No plugin of the asked kind has that name."""

    def __init__(self, kind: str, name: str, available: dict[str, str]) -> None:
        self.kind = kind
        self.name = name
        self.available = dict(available)
        listing = ", ".join(f"{n} ({dist})" for n, dist in sorted(available.items())) or "none"
        super().__init__(f"no {kind} named {name!r}; available: {listing}")


class GatewayUnavailableError(EasyRemoteError, ConnectionError):
    """The gateway cannot be reached (refused, unreachable, or retries exhausted)."""


class ConnectionLostError(EasyRemoteError, ConnectionError):
    """An established link to the peer broke."""


class AuthenticationError(EasyRemoteError):
    """The gateway refused the presented token, or its credential does not allow what was asked.

    E.g. a client credential used to register a node, a node_id outside the credential's
    patterns, a call to a function the credential may not call, or another caller's call id.
    """


class ProtocolError(EasyRemoteError):
    """The peer spoke another protocol version or sent a malformed frame."""


class MessageTooLargeError(ProtocolError, ValueError):
    """A frame is larger than ``max_message_size``."""


class NoNodeAvailableError(EasyRemoteError):
    """No node serves the function (or the pinned node is not connected)."""


class NodeLostError(EasyRemoteError):
    """The node running the call disconnected or died before answering."""


class NodeBusyError(EasyRemoteError):
    """The node's queue is full (``max_queue_size``)."""


class StreamingFunctionError(EasyRemoteError, TypeError):
    """A generator function was called for one result; iterate over ``stream()`` instead."""


class CallTimeoutError(EasyRemoteError, TimeoutError):
    """The call did not finish within its timeout and was cancelled."""


class RemoteExecutionError(EasyRemoteError):
    """The remote function raised; carries the remote type name, message and traceback."""

    def __init__(self, type_name: str, message: str, traceback: str = "", node_id: str = "") -> None:
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = traceback
        self.node_id = node_id
        super().__init__(f"{type_name}: {message}" if message else type_name)

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text
