"""The call table: every call in flight, who asked it, which node runs it, and answers held for a caller."""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Callable

import anyio

from .._heartbeat import HEARTBEAT_TIMEOUT
from .._logs import Quieter
from .._protocol import Attachment, ErrorCode, code_name, error_frame, pb, whole_frame
from ._registry import Registry
from ._router import Refused, Routed, Router
from ._sessions import Call, NodeSession, Peer

logger = logging.getLogger("easyremote.gateway")

#: How many times an idempotent call is sent to a node before a lost node fails it.
MAX_DELIVERIES = 3
#: Calls one client may have in flight at once.
MAX_CALLS_PER_CLIENT = 10_000
TERMINAL = frozenset({"result", "error", "end"})


class CallTable:
    """Routes calls to nodes and answers back to their callers, across lost links on either side.

    ``grace`` bounds how long a call waits for a node to come back, and how long answers
    are held for a caller that lost its link; ``max_held_bytes`` bounds how much is held
    for one absent caller (past it, its calls fail and their answers are dropped).
    """

    def __init__(self, *, gateway_id: str, registry: Registry, router: Router, grace: float,
                 notify: Callable[..., None], spawn: Callable[..., None], max_held_bytes: float = math.inf,
                 quiet: Quieter | None = None, startup_grace: float = 0.0) -> None:
        self.gateway_id = gateway_id
        self.registry = registry
        self.router = router
        self.grace = grace
        self.startup_grace = startup_grace  # the most a call waits for a function served before to come back
        self.max_held_bytes = max_held_bytes
        self._quiet = quiet or Quieter(logger)
        self._notify = notify
        self._spawn = spawn
        self.calls: dict[str, Call] = {}
        self.now: Callable[[], float] = anyio.current_time  # the loop's clock, set once serving (clock())

    # -- from clients ---------------------------------------------------------------------

    def accept(self, client: Peer, request: pb.CallRequest, attachment: Attachment | None = None) -> None:
        if not client.credential.covers(request.function):
            client.link.send(error_frame(request.call_id, ErrorCode.CODE_FORBIDDEN,
                                         f"credential {client.credential.name!r} may not call "
                                         f"{request.function[:200]!r}"))
            return
        existing = self.calls.get(request.call_id)
        if existing is not None and not _same_owner(existing, client):
            self._quiet.log(logging.WARNING, client.peer, "foreign call",
                            "Refused client %s: call %s belongs to another caller", client.peer, request.call_id[:64])
            client.link.send(error_frame(request.call_id, ErrorCode.CODE_FORBIDDEN,
                                         f"call {request.call_id[:64]} belongs to another caller"))
            return
        if existing is not None:  # the client reconnected and asks again: re-attach
            existing.client = client
            client.calls[request.call_id] = existing
            held = self._release_held(existing)
            self._count(existing, -1)
            existing.caller = client
            self._count(existing, +1)
            for envelope, answer in held:
                client.link.send(envelope, answer)
                if envelope.WhichOneof("body") in TERMINAL:
                    self.forget(existing)
            return
        size = len(request.payload) + (len(attachment) if attachment is not None else 0)
        if len(client.calls) >= MAX_CALLS_PER_CLIENT or client.call_bytes + size > self.max_held_bytes:
            client.link.send(error_frame(request.call_id, ErrorCode.CODE_NODE_BUSY, (
                f"the gateway keeps at most {MAX_CALLS_PER_CLIENT} calls and {self.max_held_bytes} bytes "
                f"(max_peer_buffer) of arguments per client; this client has {len(client.calls)} calls and "
                f"{client.call_bytes} bytes waiting for answers")))
            return
        # A call asked again (attempt > 1) that this gateway does not know was lost with the
        # link (or with a gateway restart); dispatch decides, once a node says whether the
        # function is idempotent, whether it may run again, unless the client knows the node
        # that took it (resume): that node attaches it or answers it.
        as_framed = request.owner == client.owner
        if not as_framed:
            request.owner = client.owner  # what the client says of itself does not count
        call = Call(request=request, client=client, started=self.now(), asked_again=request.attempt > 1,
                    owner=(client.key, client.credential), caller=client, attachment=attachment, size=size,
                    as_framed=as_framed)
        self.calls[request.call_id] = call
        client.calls[request.call_id] = call
        self._count(call, +1)
        self.dispatch(call)

    def cancel(self, client: Peer, cancel: pb.Cancel) -> None:
        call = self.calls.get(cancel.call_id)
        if call is not None and _same_owner(call, client):
            if call.node is not None:
                call.node.link.send(pb.Envelope(cancel=cancel))
            self.forget(call)

    def client_ended(self, client: Peer) -> None:
        for call in list(client.calls.values()):
            if call.client is client:
                call.client = None
        if client.calls:
            self._spawn(self._forget_orphans_later, client)

    async def _forget_orphans_later(self, client: Peer) -> None:
        await anyio.sleep(self.grace)
        for call in list(client.calls.values()):
            if call.client is None and self.calls.get(call.request.call_id) is call:
                if call.node is not None:
                    call.node.link.send(pb.Envelope(cancel=pb.Cancel(
                        call_id=call.request.call_id, reason="the caller did not come back")))
                self.forget(call)
        client.calls.clear()

    # -- to nodes -------------------------------------------------------------------------

    def dispatch(self, call: Call) -> None:
        """Send the call to a node now, wait for one that is coming back, or fail it."""
        request = call.request
        if request.resume:
            self._resume(call)
            return
        route = self.router.route(request.function, request.node_id, remembered=request.served_before)
        if isinstance(route, Routed):
            self._send(call, route.node)
        elif isinstance(route, Refused):
            self.finish(call, error_frame(request.call_id, route.code, route.message))
        else:
            self._spawn(self._wait_for_node, call, route.bounded)

    def _resume(self, call: Call) -> None:
        """A call the client was told went to a node (Routed), asked for again through this gateway:
        to that node's same run, when it is here, else wait for it; a node that restarted
        cannot tell whether it ran."""
        request = call.request
        node = self.registry.nodes.get(request.node_id)
        if node is not None and node.incarnation != request.incarnation:
            self.finish(call, error_frame(
                request.call_id, ErrorCode.CODE_NODE_LOST,
                f"node {request.node_id} restarted after it took call {request.call_id} of {request.function!r}; "
                "it may or may not have run", node_id=request.node_id))
        elif node is not None and node.ready and request.function in node.functions:
            self._send(call, node)
        elif request.only_if_here:  # the caller already heard it was lost; it asks whether it lives here
            self.finish(call, error_frame(
                request.call_id, ErrorCode.CODE_NODE_LOST,
                f"node {request.node_id}, which took call {request.call_id} of {request.function!r}, is not "
                "linked to this gateway either; it may or may not have run", node_id=request.node_id))
        else:
            self._spawn(self._wait_for_node, call)

    def _resumable(self, call: Call) -> bool:
        """Whether a resumed call can be decided now: its node is here, ready or another run."""
        node = self.registry.nodes.get(call.request.node_id)
        return node is not None and (node.ready or node.incarnation != call.request.incarnation)

    def _send(self, call: Call, node: NodeSession) -> None:
        request = call.request
        spec = node.functions[request.function]
        call.idempotent = spec.idempotent
        if call.asked_again and call.deliveries == 0 and not spec.idempotent and not request.resume:
            self._ask_around(call)
            return
        call.node = node
        call.deliveries += 1
        node.calls[request.call_id] = call
        if not spec.idempotent and not request.streaming and call.client is not None:
            # Told before the node has it: if this gateway is lost, the client asks that node again.
            call.client.link.send(pb.Envelope(routed=pb.Routed(call_id=request.call_id, node_id=node.node_id,
                                                               incarnation=node.incarnation)))
        frame = whole_frame(call.attachment) if call.attachment is not None else None
        if frame is not None and call.as_framed and request.attempt == call.deliveries:
            node.link.send_frame(frame)  # the client's frame says it all: forwarded as it came, not copied
        else:
            request.attempt = call.deliveries
            node.link.send(pb.Envelope(call=request), call.attachment)  # the payload's bytes, untouched
        self._notify("easyremote_call_started", call_id=request.call_id, function=request.function,
                     node_id=node.node_id)

    def _ask_around(self, call: Call) -> None:
        """A non-idempotent call asked again that this gateway never saw, with no node named (its
        gateway was lost before the client heard where it went): ask each node here that serves it
        whether it has it. The one that has it attaches it; if none has, it never ran: run it."""
        request = call.request
        if call.probing is not None:
            return
        sessions = self._all_here(call)
        if sessions is None:
            # A node that may have it is away (reconnecting, or served it and not back yet after a
            # restart): wait for it, so that every node that could have the call is asked.
            self._spawn(self._ask_when_all_here, call)
            return
        call.probing = {n.node_id for n in sessions}
        for node in sessions:
            node.calls[request.call_id] = call
            probe = pb.CallRequest()
            probe.CopyFrom(request)
            probe.resume = probe.only_if_known = True
            probe.node_id, probe.incarnation = node.node_id, node.incarnation
            node.link.send(pb.Envelope(call=probe), call.attachment)

    def _all_here(self, call: Call) -> list[NodeSession] | None:
        """The sessions to ask about ``call``, if every node that may have it is here and connected."""
        request = call.request
        sessions = [n for n in self.registry.serving(request.function)
                    if not request.node_id or n.node_id == request.node_id]
        here = {n.node_id for n in sessions if n.registered and n.lost_at is None}
        expected = {n.node_id for n in sessions} | self.registry.history.may_hold(request.function)
        if request.node_id:
            expected &= {request.node_id}
        if not here or not expected <= here:
            return None
        return [n for n in sessions if n.node_id in here]

    async def _ask_when_all_here(self, call: Call) -> None:
        request = call.request
        limit = min(request.timeout if request.timeout > 0 else self.grace, max(self.grace, self.startup_grace))
        with anyio.move_on_after(limit):
            while self.calls.get(request.call_id) is call:
                if self._all_here(call) is not None:
                    self._ask_around(call)
                    return
                await self.registry.wait_changed()
        if self.calls.get(request.call_id) is call and call.probing is None:
            self.finish(call, error_frame(
                request.call_id, ErrorCode.CODE_CANCELLED,
                f"call {request.call_id} of {request.function!r} was lost with the link to the gateway; "
                "it may or may not have run (a node that may have it did not come back in time), and it is "
                "not run again because the function is not idempotent"))

    def _probe_answered(self, call: Call, node: NodeSession, known: bool) -> None:
        """One node's answer to :meth:`_ask_around`: ``known`` — it has the call, whose answers are its."""
        assert call.probing is not None
        call.probing.discard(node.node_id)
        if known:
            self._stop_asking(call)
            call.node = node
            call.deliveries = 1
            return
        node.calls.pop(call.request.call_id, None)
        if not call.probing and call.node is None:
            logger.info("Call %s of %r, asked again, never reached a node: running it", call.request.call_id,
                        call.request.function)
            call.asked_again = False
            call.as_framed = False
            call.request.after_asking = True  # each node asked now refuses late copies, except this one
            self.dispatch(call)

    def _stop_asking(self, call: Call) -> None:
        """The nodes still asked about ``call`` will answer that they do not have it: not needed."""
        for node_id in call.probing or ():
            session = self.registry.nodes.get(node_id)
            if session is not None and session.calls.get(call.request.call_id) is call:
                del session.calls[call.request.call_id]
        call.probing = set()

    async def _wait_for_node(self, call: Call, bounded: bool = False, within: float = math.inf) -> None:
        request = call.request
        limit = min(request.timeout if request.timeout > 0 else self.grace, within)
        if bounded:  # no node of it is here: it was served before, so it may come back
            limit = min(limit, self.startup_grace)
        with anyio.move_on_after(limit):
            while call.node is None and self.calls.get(request.call_id) is call:
                # Route again before each wait: a node may have registered between the
                # dispatch that started this task and the moment it runs.
                if request.resume:
                    decided = self._resumable(call)
                else:
                    route = self.router.route(request.function, request.node_id, remembered=request.served_before)
                    decided = isinstance(route, (Routed, Refused))
                if decided:
                    self.dispatch(call)
                    return
                await self.registry.wait_changed()
        if call.node is None and self.calls.get(request.call_id) is call:
            if request.resume:
                self.finish(call, error_frame(
                    request.call_id, ErrorCode.CODE_NODE_LOST,
                    f"node {request.node_id}, which took call {request.call_id} of {request.function!r}, did not "
                    "come back in time; it may or may not have run", node_id=request.node_id))
            elif bounded:
                self.finish(call, error_frame(request.call_id, ErrorCode.CODE_NO_NODE, (
                    f"no node serves {request.function!r}: it was served before, and no node serving it "
                    f"came back in time (within {limit:g} s)")))
            else:
                self.finish(call, error_frame(request.call_id, ErrorCode.CODE_NO_NODE,
                                              f"no node serving {request.function!r} came back in time"))

    # -- from nodes -----------------------------------------------------------------------

    def answer(self, node: NodeSession, envelope: pb.Envelope, attachment: Attachment | None = None) -> None:
        """A result, error, stream item or end from ``node`` (its payload attached or not)."""
        kind = envelope.WhichOneof("body")
        call = node.calls.get(getattr(envelope, kind).call_id)
        if call is None:
            return  # an answer to a call that was cancelled or re-routed
        if call.probing:  # the nodes were asked whether they have it
            unknown = kind == "error" and envelope.error.code == ErrorCode.CODE_UNKNOWN_CALL
            self._probe_answered(call, node, known=not unknown)
            if unknown:
                return
        if kind == "error" and envelope.error.code == ErrorCode.CODE_STOPPING:
            node.calls.pop(call.request.call_id, None)  # it never ran there: route it again
            call.node = None
            call.deliveries -= 1
            self.dispatch(call)
            self.registry.leave_when_idle(node)
        elif kind in TERMINAL:
            self.finish(call, envelope, attachment)
        else:
            self._deliver(call, envelope, attachment)

    def node_lost(self, node: NodeSession, reason: str) -> None:
        """Re-route the idempotent calls of a session that ended; the others wait for the node when it
        may still be running them (its link went silent, or the same run of it is already back);
        else they fail with NodeLost."""
        current = self.registry.nodes.get(node.node_id)
        may_live = bool(node.incarnation) and (
            reason == HEARTBEAT_TIMEOUT or _silent_before_it_closed(node)
            or (current is not None and current is not node and current.incarnation == node.incarnation))
        for call in list(node.calls.values()):
            node.calls.pop(call.request.call_id, None)
            call.node = None
            request = call.request
            if call.probing:  # asked whether it has the call, and gone before it said
                self._stop_asking(call)
                self.finish(call, error_frame(
                    request.call_id, ErrorCode.CODE_CANCELLED,
                    f"call {request.call_id} of {request.function!r} was lost with the link to the gateway, and "
                    f"node {node.node_id}, which may have it, was lost too; it may or may not have run",
                    node_id=node.node_id))
            elif call.idempotent and call.deliveries < MAX_DELIVERIES:
                logger.info("Re-routing idempotent call %s of %r after node %s was lost",
                            call.request.call_id, call.request.function, node.node_id)
                self.dispatch(call)
            elif may_live and not request.streaming:
                logger.info("Call %s of %r waits for node %s to come back: it may still be running there",
                            request.call_id, request.function, node.node_id)
                request.resume = True  # to that node's same run, which attaches it or answers it
                request.node_id = node.node_id
                request.incarnation = node.incarnation
                self._spawn(self._wait_for_node, call, False, self.grace)
            else:
                if node.abandoned is None:
                    node.abandoned = []
                node.abandoned.append(call.request.call_id)
                self.finish(call, error_frame(
                    call.request.call_id, ErrorCode.CODE_NODE_LOST,
                    f"node {node.node_id} was lost while running {call.request.function!r} ({reason}); "
                    "it may or may not have run",
                    node_id=node.node_id))

    # -- answers --------------------------------------------------------------------------

    def _deliver(self, call: Call, envelope: pb.Envelope, attachment: Attachment | None = None) -> None:
        if call.client is not None:
            frame = whole_frame(attachment) if attachment is not None else None
            if frame is not None:  # a node's answer goes on to its caller unchanged: forward the frame
                call.client.link.send_frame(frame)
            else:
                call.client.link.send(envelope, attachment)
            return
        caller = call.caller
        size = envelope.ByteSize() + (len(attachment) if attachment is not None else 0)
        if caller is not None and caller.held_bytes + size > self.max_held_bytes:
            self._drop_held(caller)
            return
        call.held.append((envelope, attachment))
        call.held_bytes += size
        if caller is not None:
            caller.held_bytes += size

    @staticmethod
    def _count(call: Call, sign: int) -> None:
        if call.caller is not None:
            call.caller.call_bytes += sign * call.size

    def _release_held(self, call: Call) -> list[tuple[pb.Envelope, Attachment | None]]:
        held, call.held = call.held, []
        if call.caller is not None:
            call.caller.held_bytes -= call.held_bytes
        call.held_bytes = 0
        return held

    def _drop_held(self, caller: Peer) -> None:
        """An absent caller's answers outgrew ``max_held_bytes``: fail its calls, keeping only the errors."""
        logger.warning("Dropped the answers held for client %s: more than %d bytes while it was away",
                       caller.peer, self.max_held_bytes)
        for call in list(caller.calls.values()):
            if call.client is not None or self.calls.get(call.request.call_id) is not call:
                continue
            self._release_held(call)
            if call.node is not None:
                call.node.link.send(pb.Envelope(cancel=pb.Cancel(
                    call_id=call.request.call_id, reason="its answers outgrew what the gateway holds")))
                call.node.calls.pop(call.request.call_id, None)
                self.registry.leave_when_idle(call.node)
                call.node = None
            call.held.append((error_frame(
                call.request.call_id, ErrorCode.CODE_CANCELLED,
                f"the answers of call {call.request.call_id} of {call.request.function!r} were dropped: "
                f"more than max_peer_buffer ({self.max_held_bytes} bytes) waited for the caller while it was away"),
                None))

    def finish(self, call: Call, envelope: pb.Envelope, attachment: Attachment | None = None) -> None:
        self._deliver(call, envelope, attachment)
        outcome = "ok" if envelope.WhichOneof("body") != "error" else code_name(envelope.error.code)
        node_id = call.node.node_id if call.node is not None else envelope.error.node_id
        self._notify("easyremote_call_finished", call_id=call.request.call_id, function=call.request.function,
                     node_id=node_id, outcome=outcome, duration=self.now() - call.started)
        if call.node is not None:
            call.node.calls.pop(call.request.call_id, None)
            self.registry.leave_when_idle(call.node)
        if call.client is not None:
            self.forget(call)
        # else: kept, answer held, until the caller re-attaches or _forget_orphans_later drops it

    def forget(self, call: Call) -> None:
        if call.held:
            self._release_held(call)
        call_id = call.request.call_id
        if self.calls.get(call_id) is call:
            del self.calls[call_id]
            self._count(call, -1)
        if call.node is not None:
            call.node.calls.pop(call_id, None)
            self.registry.leave_when_idle(call.node)
        if call.client is not None:
            call.client.calls.pop(call_id, None)

    def clear(self) -> None:
        self.calls.clear()


def _same_owner(call: Call, client: Peer) -> bool:
    """Whether ``client`` is the caller of ``call``: the same client key and the same credential."""
    key, credential = call.owner
    return hmac.compare_digest(key, client.key) and credential == client.credential


#: A link is silent once it missed its peer's heartbeats for this many intervals.
SILENT_INTERVALS = 1.25


def _silent_before_it_closed(node: NodeSession) -> bool:
    """Whether the node's link had gone quiet before it closed: a node that dies closes its link
    within a heartbeat interval of its last frame, while a link that closes after a silence (a
    black hole that healed once the node had given up on it, and reset it) says nothing about
    whether the node lives; it is treated as a silent link."""
    health = node.link.health
    return anyio.current_time() - health.last_received > SILENT_INTERVALS * health.heartbeat_interval
