"""The router alone: for one call, a node now, a wait, or an error, from the registry's nodes and the policy."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from easyremote_core._gateway._calls import CallTable
from easyremote_core._gateway._history import History
from easyremote_core._gateway._registry import Registry
from easyremote_core._gateway._router import Refused, Routed, Router, Wait
from easyremote_core._gateway._sessions import NodeSession, Peer
from easyremote_core._plugins import get_plugin_manager
from easyremote_core._protocol import ErrorCode, decode_frame, encode, pb
from easyremote_core._routing import LeastLoaded, RoutingPolicy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]


class Recording(RoutingPolicy):
    name = "recording"

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def choose(self, function, candidates):  # type: ignore[no-untyped-def]
        self.asked.append([c.node_id for c in candidates])
        return candidates[-1]


def node(node_id: str, *functions: str, ready: bool = True, leaving: str = "", lost: bool = False,
         in_flight: int = 0, queue: int = 10) -> NodeSession:
    session = NodeSession(link=SimpleNamespace(close=lambda reason: None), peer="test",  # type: ignore[arg-type]
                          node_id=node_id,
                          functions={f: pb.FunctionSpec(name=f) for f in functions},
                          registered=ready, leaving=leaving, max_queue_size=queue)
    session.lost_at = 1.0 if lost else None
    session.calls = {str(i): None for i in range(in_flight)}  # type: ignore[misc]
    return session


QUIET = SimpleNamespace(notify=lambda *args, **kwargs: None)  # a plugin manager with no hooks


def router(*nodes: NodeSession, served: tuple[str, ...] = ()) -> tuple[Router, Recording]:
    """A router over ``nodes``; ``served``: functions (and node ids) its history says were served before."""
    policy = Recording()
    registry = Registry(gateway_id="test", node_grace=1.0, max_functions=100, plugins=lambda: QUIET,  # type: ignore[arg-type,return-value]
                        spawn=lambda *args: None, on_lost=lambda session, reason: None)
    for session in nodes:
        registry.connect(session)
    history = History()
    for name in served:
        history.saw(name, [name])
    r = Router(registry, policy, history)
    return r, policy


async def test_one_ready_node_is_chosen_without_asking_the_policy() -> None:
    r, policy = router(node("a", "f"), node("b", "g"))
    assert r.route("f") == Routed(r.registry.nodes["a"])
    assert policy.asked == []


async def test_the_policy_chooses_among_ready_nodes_and_again_among_those_with_room() -> None:
    r, policy = router(node("a", "f"), node("b", "f", in_flight=10), node("c", "f"), node("d", "f", lost=True),
                       node("e", "f", leaving="stopping"))
    route = r.route("f")
    assert isinstance(route, Routed) and route.node.node_id == "c"
    assert policy.asked == [["a", "b", "c"]]  # c has room: one question
    r, policy = router(node("a", "f"), node("c", "f"), node("b", "f", in_flight=10))
    route = r.route("f")  # the policy picks the last: b, whose queue is full
    assert isinstance(route, Routed) and route.node.node_id == "c"
    assert policy.asked == [["a", "c", "b"], ["a", "c"]]


class Counted(list):  # type: ignore[type-arg]
    """A candidate list that counts how many nodes a policy looked at."""

    looked = 0

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        Counted.looked += 1
        return super().__getitem__(index)

    def __iter__(self):  # type: ignore[no-untyped-def]
        for item in super().__iter__():
            Counted.looked += 1
            yield item


@pytest.mark.parametrize("policy_name", ["least-loaded", "round-robin", "random"])
async def test_the_shipped_policies_look_at_two_nodes_at_most_of_a_thousand(policy_name: str) -> None:
    policy = get_plugin_manager().routing_policy(policy_name)
    nodes = [node(f"n{i}", "f", in_flight=i % 3) for i in range(1000)]
    candidates = Counted(nodes)
    Counted.looked = 0
    chosen = [policy.choose("f", candidates) for _ in range(100)]
    assert Counted.looked <= 200
    assert {id(n) for n in chosen} <= {id(n) for n in nodes}


async def test_least_loaded_keeps_a_hundred_nodes_within_a_few_calls_of_each_other() -> None:
    nodes = [node(f"n{i}", "f", queue=10_000) for i in range(100)]
    r = Router(router(*nodes)[0].registry, LeastLoaded(random.Random(7)))
    for i in range(2000):  # calls that stay in flight: each routed to the node least loaded of two
        route = r.route("f")
        assert isinstance(route, Routed)
        route.node.calls[str(i)] = None  # type: ignore[assignment]
    loads = [len(n.calls) for n in nodes]
    assert sum(loads) == 2000 and max(loads) - min(loads) <= 5, loads


async def test_the_ready_list_is_made_once_between_changes_of_node_state() -> None:
    r, _ = router(node("a", "f"), node("b", "f"), node("c", "f", lost=True))
    registry = r.registry
    ready = registry.ready_serving("f")
    assert [n.node_id for n in ready] == ["a", "b"]
    r.route("f")
    assert registry.ready_serving("f") is ready  # calls do not make it again
    registry.goodbye(registry.nodes["a"], "stopping")
    assert [n.node_id for n in registry.ready_serving("f")] == ["b"]


async def test_no_node_serving_the_function_is_an_error_unless_it_was_served_before() -> None:
    r, _ = router(node("a", "f"))
    refused = r.route("g")
    assert isinstance(refused, Refused) and refused.code == ErrorCode.CODE_NO_NODE and "'g'" in refused.message
    assert r.route("g", remembered=True) == Wait(bounded=True)  # the caller was served g before
    known, _ = router(node("a", "f"), served=("g",))
    assert known.route("g") == Wait(bounded=True)  # the gateway's history says g was served


async def test_a_node_coming_back_is_waited_for_and_one_stopping_is_not() -> None:
    r, _ = router(node("a", "f", lost=True))
    assert r.route("f") == Wait()
    r, _ = router(node("a", "f", leaving="stopped"))
    refused = r.route("f")
    assert isinstance(refused, Refused) and "stopping" in refused.message


async def test_full_queues_are_node_busy() -> None:
    r, _ = router(node("a", "f", in_flight=2, queue=2))
    refused = r.route("f")
    assert isinstance(refused, Refused) and refused.code == ErrorCode.CODE_NODE_BUSY


async def test_a_pinned_node() -> None:
    r, policy = router(node("a", "f"), node("b", "f"))
    route = r.route("f", node_id="b")
    assert isinstance(route, Routed) and route.node.node_id == "b" and policy.asked == []
    missing = r.route("f", node_id="zz")
    assert isinstance(missing, Refused) and "'zz' is not connected" in missing.message
    wrong = r.route("g", node_id="a")
    assert isinstance(wrong, Refused) and "does not serve 'g'" in wrong.message
    known, _ = router(served=("zz",))
    assert known.route("f", node_id="zz") == Wait(bounded=True)


async def test_only_the_nodes_that_serve_the_function_are_looked_at() -> None:
    """Routing reads an index of function -> nodes: 1,000 nodes serving other functions cost nothing,
    and a node that re-registers without a function, or is replaced, leaves the index."""
    others = [node(f"other-{i}", f"g{i}") for i in range(1000)]
    r, policy = router(*others, node("a", "f"), node("b", "f"))
    route = r.route("f")
    assert isinstance(route, Routed) and policy.asked == [["a", "b"]]
    registry = r.registry
    registry.register(registry.nodes["b"], pb.Register(functions=[pb.FunctionSpec(name="h")]))
    assert [n.node_id for n in registry.serving("f")] == ["a"]
    registry.connect(node("a", "h"))  # a new session of node a replaces the old one
    assert list(registry.serving("f")) == []
    assert sorted(n.node_id for n in registry.serving("h")) == ["a", "b"]


class RecordingLink:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.envelopes: list[pb.Envelope] = []

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def send(self, envelope: pb.Envelope, attachment: object = None) -> None:
        self.envelopes.append(envelope)

    def close(self, reason: str) -> None:
        pass


async def test_a_call_with_a_large_payload_is_forwarded_as_the_client_framed_it_not_copied() -> None:
    worker = node("a", "f", queue=10)
    worker.link = RecordingLink()  # type: ignore[assignment]
    r, _ = router(worker)
    table = CallTable(gateway_id="test", registry=r.registry, router=r, grace=1.0,
                      notify=lambda *args, **kwargs: None, spawn=lambda *args: None)
    client = Peer(link=RecordingLink(), peer="client", key=b"k")  # type: ignore[arg-type]
    payload = b"p" * (1024 * 1024)  # travels attached, apart from the envelope
    frame = encode(pb.Envelope(call=pb.CallRequest(call_id="c1", function="f", attempt=1)), payload)
    envelope, attachment = decode_frame(frame)
    table.accept(client, envelope.call, attachment)
    assert worker.link.frames == [frame] and worker.link.frames[0] is frame  # type: ignore[attr-defined]
    # Delivered again (its node was lost, the function is idempotent): the attempt changes, so
    # the envelope is built anew around the same payload.
    worker.functions["f"].idempotent = True
    table.calls["c1"].idempotent = True
    again = node("b", "f", queue=10)
    again.link = RecordingLink()  # type: ignore[assignment]
    r.registry.connect(again)
    r.registry.register(again, pb.Register(functions=[pb.FunctionSpec(name="f")]))
    table.node_lost(worker, "gone")
    assert [e.call.attempt for e in again.link.envelopes] == [2]  # type: ignore[attr-defined]
