"""The route of one call: a node now, wait for one coming back, or an error for the caller."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from .._protocol import ErrorCode, pb
from .._routing import RoutingPolicy
from ._history import History
from ._registry import Registry
from ._sessions import NodeSession


@dataclass(frozen=True)
class Routed:
    """Send the call to this node now."""

    node: NodeSession


@dataclass(frozen=True)
class Wait:
    """A node that serves the function is coming back (``bounded=False``: it is reconnecting), or
    may (``bounded=True``: the function, or the node asked for, was served before and no node
    serving it is here now; that wait is bounded by ``startup_grace``)."""

    bounded: bool = False


@dataclass(frozen=True)
class Refused:
    """No node can take the call: answer the caller with this error."""

    code: pb.Error.Code
    message: str


Route = Routed | Wait | Refused


class Router:
    """Decides, for one call, between a node, waiting, and an error; the policy picks among ready nodes."""

    def __init__(self, registry: Registry, policy: RoutingPolicy, history: History | None = None) -> None:
        self.registry = registry
        self.policy = policy
        self.history = history or History()

    def route(self, function: str, node_id: str = "", *, remembered: bool = False) -> Route:
        """Where a call goes; ``remembered``: the caller was served this function before."""
        if node_id:
            node = self.registry.nodes.get(node_id)
            if node is None:
                if self.history.knows_node(node_id):
                    return Wait(bounded=True)
                return Refused(ErrorCode.CODE_NO_NODE, f"node {node_id!r} is not connected")
            if function not in node.functions:
                return Refused(ErrorCode.CODE_NO_NODE, f"node {node_id!r} does not serve {function!r}")
            candidates: Collection[NodeSession] = (node,)
        else:
            # O(1) when it can: the policy picks among the ready nodes, kept as a list between
            # changes of node state; only if the node it picks has a full queue are the others
            # looked at, to ask again among those with room.
            ready_nodes = self.registry.ready_serving(function)
            if ready_nodes:
                chosen = self.policy.choose(function, ready_nodes) if len(ready_nodes) > 1 else ready_nodes[0]
                if len(chosen.calls) < chosen.max_queue_size:  # type: ignore[attr-defined]
                    return Routed(chosen)  # type: ignore[arg-type]
            candidates = self.registry.serving(function)  # an index: the other nodes cost nothing
        if not candidates:
            if remembered or self.history.served(function):
                return Wait(bounded=True)
            return Refused(ErrorCode.CODE_NO_NODE, f"no node serves {function!r}")
        open_nodes = []
        staying = ready = False
        for n in candidates:
            if n.leaving:
                continue
            staying = True
            if not n.ready:
                continue
            ready = True
            if len(n.calls) < n.max_queue_size:
                open_nodes.append(n)
        if not open_nodes:
            if not staying:
                return Refused(ErrorCode.CODE_NO_NODE, f"no node serves {function!r} (its node is stopping)")
            if not ready:
                return Wait()
            return Refused(ErrorCode.CODE_NODE_BUSY,
                           f"every node serving {function!r} has a full queue (max_queue_size)")
        chosen = self.policy.choose(function, open_nodes) if len(open_nodes) > 1 else open_nodes[0]
        return Routed(chosen)  # type: ignore[arg-type]
