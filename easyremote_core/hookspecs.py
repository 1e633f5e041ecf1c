"""Hook specifications of the ``easyremote`` pluggy project.

Plugins are modules or objects found through the ``easyremote`` entry-point
group. Registration hooks return ``{name: factory}`` mappings; all results are
collected. Observer hooks are called for every event and their return values
are ignored; an observer that raises is logged and does not disturb the link.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ._probes import HealthProbe
    from ._retry import RetryPolicy
    from ._routing import RoutingPolicy
    from ._transport import Transport

PROJECT = "easyremote"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def easyremote_transports() -> Mapping[str, Callable[..., Transport]]:
    """Return transports by name.

    Each factory is called with keyword options (for instance ``tls=``) and
    returns a :class:`~easyremote_core.Transport`. The name is also the address
    scheme that selects it (``grpc://host:port``).
    """


@hookspec
def easyremote_retry_policies() -> Mapping[str, Callable[..., RetryPolicy]]:
    """Return retry policies by name.

    Each factory is called as ``factory(base=seconds, cap=seconds)`` and returns
    a :class:`~easyremote_core.RetryPolicy`.
    """


@hookspec
def easyremote_health_probes() -> Mapping[str, Callable[..., HealthProbe]]:
    """Return health probes by name.

    Each factory is called with no arguments and returns a
    :class:`~easyremote_core.HealthProbe`.
    """


@hookspec
def easyremote_routing_policies() -> Mapping[str, Callable[[], RoutingPolicy]]:
    """Return gateway routing policies by name.

    Each factory is called with no arguments and returns a
    :class:`~easyremote_core.RoutingPolicy`; a gateway makes one when it is created
    (``Gateway(routing=name)``, ``--routing``, ``$EASYREMOTE_ROUTING``).
    """


@hookspec
def easyremote_connection_state_changed(
    role: str, peer: str, old_state: str, new_state: str, reason: str
) -> None:
    """A node's or client's connection changed state.

    :param role: ``"node"`` or ``"client"``.
    :param peer: the gateway address.
    :param old_state: one of ``idle, connecting, ready, reconnecting, closed``.
    :param new_state: as ``old_state``.
    :param reason: why, in words (empty when there is nothing to say); the change to
        ``closed`` says ``"stopped"`` after a stop, else the error that ended the run.
    """


@hookspec
def easyremote_node_registered(gateway_id: str, node_id: str, functions: Sequence[str]) -> None:
    """A gateway accepted a node's registration.

    :param gateway_id: the gateway's identity.
    :param node_id: the node's identity.
    :param functions: the function names it serves.
    """


@hookspec
def easyremote_node_lost(gateway_id: str, node_id: str, reason: str) -> None:
    """A gateway lost a node's session (closed, evicted, or replaced).

    :param gateway_id: the gateway's identity.
    :param node_id: the node's identity.
    :param reason: why, in words.
    """


@hookspec
def easyremote_call_started(gateway_id: str, call_id: str, function: str, node_id: str) -> None:
    """A gateway routed a call to a node.

    :param call_id: the call's identity.
    :param function: the function name.
    :param node_id: the node chosen.
    """


@hookspec
def easyremote_call_finished(
    gateway_id: str, call_id: str, function: str, node_id: str, outcome: str, duration: float
) -> None:
    """A call routed by a gateway finished.

    :param outcome: ``"ok"`` or the error code name (``"node_lost"``, ``"timeout"``, …).
    :param duration: seconds from routing to the answer.
    """
