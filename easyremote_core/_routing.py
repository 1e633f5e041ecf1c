"""Routing policies: which ready node runs a call. The interface, and the shipped ones as a built-in plugin."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import pluggy

# The marker of the "easyremote" pluggy project (hookspecs.hookimpl), made here because
# hookspecs names RoutingPolicy in its signatures: the two modules import one way only.
hookimpl = pluggy.HookimplMarker("easyremote")

#: Round-robin remembers the turn of at most this many functions.
MAX_TRACKED_FUNCTIONS = 100_000


class NodeLoad(Protocol):
    """What a routing policy may look at of a candidate node."""

    @property
    def node_id(self) -> str: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def max_concurrency(self) -> int: ...
    @property
    def labels(self) -> Mapping[str, str]: ...


class RoutingPolicy(ABC):
    """Picks one of the ready nodes that serve a function.

    ``choose`` is called on the gateway's event loop for every call; it must be quick (O(1)
    if it can: a function may have hundreds of nodes) and must not block. ``candidates`` is
    never empty. If the node chosen has a full queue, ``choose`` is called again at once
    with only the nodes that have room.
    """

    name: str = ""

    @abstractmethod
    def choose(self, function: str, candidates: Sequence[NodeLoad]) -> NodeLoad:
        """Return one of ``candidates``."""


def _load(node: NodeLoad) -> float:
    return node.in_flight / max(node.max_concurrency, 1)


class LeastLoaded(RoutingPolicy):
    """The node with the lowest in-flight ÷ ``max_concurrency``, ties broken at random.

    Among more than ``EXACT_UP_TO`` nodes, the less loaded of two picked at random (the
    "power of two choices", as Envoy's LEAST_REQUEST and nginx's ``random two least_conn``
    balance): O(1) per call instead of a look at every node, and every node stays within a
    call or two of the least loaded.
    """

    name = "least-loaded"
    EXACT_UP_TO = 8

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, function: str, candidates: Sequence[NodeLoad]) -> NodeLoad:
        count = len(candidates)
        if count > self.EXACT_UP_TO:
            first = self._rng.randrange(count)
            second = self._rng.randrange(count - 1)
            second += second >= first  # two different nodes
            a, b = candidates[first], candidates[second]
            load_a, load_b = _load(a), _load(b)
            return a if load_a <= load_b else b  # a is the one drawn first: ties stay random
        lowest = min(_load(node) for node in candidates)
        return self._rng.choice([node for node in candidates if _load(node) == lowest])


class RoundRobin(RoutingPolicy):
    """Each function's calls go to its nodes in turn."""

    name = "round-robin"

    def __init__(self) -> None:
        self._turns: dict[str, int] = {}

    def choose(self, function: str, candidates: Sequence[NodeLoad]) -> NodeLoad:
        turns = self._turns
        if function not in turns and len(turns) >= MAX_TRACKED_FUNCTIONS:
            turns.clear()  # bounded: forgetting the turns only restarts them
        turn = turns.get(function, 0)
        turns[function] = (turn + 1) % len(candidates)
        return candidates[turn % len(candidates)]


class Random(RoutingPolicy):
    """Any candidate, uniformly."""

    name = "random"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, function: str, candidates: Sequence[NodeLoad]) -> NodeLoad:
        return candidates[self._rng.randrange(len(candidates))]


@hookimpl
def easyremote_routing_policies() -> Mapping[str, Callable[[], RoutingPolicy]]:
    return {policy.name: policy for policy in (LeastLoaded, RoundRobin, Random)}
