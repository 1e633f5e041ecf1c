"""The node registry: the gateway's node sessions, their functions, and how long a lost one is kept."""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import anyio

from .._protocol import pb
from ._admission import MAX_NAME, valid_name
from ._history import History
from ._identities import ANYONE, Credential
from ._sessions import NodeSession

if TYPE_CHECKING:
    from .._plugins import PluginManager

logger = logging.getLogger("easyremote.gateway")

#: Bounds of what a node may announce in its registration.
MAX_QUEUE_SIZE = 1_000_000
MAX_CONCURRENCY = 100_000
MAX_SECONDS = 30 * 86400.0


#: A registration's log line names at most this many functions.
LOGGED_NAMES = 20
_NONE: dict[str, NodeSession] = {}  # what serves a function nobody registered
#: Nodes per page of a node list: the default, the most a client may ask for, and a byte bound.
PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
PAGE_BYTES = 1024 * 1024


class Registry:
    """The nodes a gateway knows: connected, reconnecting (within ``node_grace``) or leaving.

    ``on_lost(session, reason)`` settles the calls of a session that ended; ``spawn`` starts
    a task in the gateway's task group.
    """

    def __init__(self, *, gateway_id: str, node_grace: float, max_functions: int,
                 plugins: Callable[[], PluginManager], spawn: Callable[..., None],
                 on_lost: Callable[[NodeSession, str], None], history: History | None = None) -> None:
        self.gateway_id = gateway_id
        self.history = history or History()  # what was served: kept after the sessions are forgotten
        self.node_grace = node_grace
        self.max_functions = max_functions
        self._plugins = plugins
        self._spawn = spawn
        self._on_lost = on_lost
        self.nodes: dict[str, NodeSession] = {}
        # function -> the current sessions that serve it, so routing a call looks only at those
        self._serving: dict[str, dict[str, NodeSession]] = {}
        # function -> its ready nodes, as a list the routing policy picks from; made again
        # after any change of a node's state (rare beside calls), so a call costs O(1)
        self._ready: dict[str, list[NodeSession]] = {}
        self._changed = anyio.Event()

    # -- changes --------------------------------------------------------------------------

    async def wait_changed(self) -> None:
        """Wait until a node registers, leaves or is forgotten."""
        await self._changed.wait()

    def changed(self) -> None:
        self._ready.clear()
        self._changed.set()
        self._changed = anyio.Event()

    def serving(self, function: str) -> Collection[NodeSession]:
        """The current sessions that registered ``function``."""
        return self._serving.get(function, _NONE).values()

    def ready_serving(self, function: str) -> list[NodeSession]:
        """The current sessions that serve ``function`` and are ready (registered, connected, staying)."""
        ready = self._ready.get(function)
        if ready is None:
            ready = self._ready[function] = [s for s in self.serving(function) if s.ready]
        return ready

    def _index(self, session: NodeSession) -> None:
        self._ready.clear()
        for name in session.functions:
            self._serving.setdefault(name, {})[session.node_id] = session

    def _unindex(self, session: NodeSession) -> None:
        self._ready.clear()
        for name in session.functions:
            sessions = self._serving.get(name)
            if sessions is not None and sessions.get(session.node_id) is session:
                del sessions[session.node_id]
                if not sessions:
                    del self._serving[name]

    def _remove(self, session: NodeSession) -> None:
        del self.nodes[session.node_id]
        self._unindex(session)

    def _notify(self, hook: str, **kwargs: Any) -> None:
        self._plugins().notify(hook, gateway_id=self.gateway_id, **kwargs)

    # -- sessions -------------------------------------------------------------------------

    def connect(self, session: NodeSession) -> NodeSession | None:
        """Make ``session`` the node's current one; an earlier session of the same node is replaced
        (and returned, its calls settled)."""
        old = self.nodes.get(session.node_id)
        self.nodes[session.node_id] = session
        if old is not None:
            self._unindex(old)
        self._index(session)  # a session registers before or after it becomes the current one
        if old is None:
            return None
        reason = "replaced by a new session of the same node"
        if old.lost_at is None and not old.leaving:
            logger.warning("Node %s lost: %s", old.node_id, reason)
            self._notify("easyremote_node_lost", node_id=old.node_id, reason=reason)
        old.link.close(reason)
        if old.forget_timer is not None:
            old.forget_timer.cancel()
        self._on_lost(old, "the node reconnected (its earlier session was replaced)")
        return old

    def check(self, register: pb.Register, credential: Credential = ANYONE) -> pb.Reject | None:
        """What is wrong with a registration, as the refusal the node gets; ``None`` when it is acceptable."""
        problem = self._problem(register)
        if problem:
            return pb.Reject(reason=pb.Reject.REASON_BAD_REQUEST, message=problem)
        for spec in register.functions:
            if not credential.covers(spec.name):
                return pb.Reject(reason=pb.Reject.REASON_AUTH, message=(
                    f"credential {credential.name!r} may not serve {spec.name!r} "
                    f"(allowed: {', '.join(credential.functions)})"))
        return None

    def _problem(self, register: pb.Register) -> str:
        if len(register.functions) > self.max_functions:
            return f"{len(register.functions)} functions are more than max_functions ({self.max_functions})"
        for spec in register.functions:
            if not valid_name(spec.name):
                return f"function name {spec.name[:40]!r} must be 1-{MAX_NAME} printable characters"
            if not (math.isfinite(spec.timeout) and 0 <= spec.timeout <= MAX_SECONDS):
                return f"the timeout of {spec.name} ({spec.timeout:g}) must be between 0 and {MAX_SECONDS:g} s"
        if register.max_queue_size > MAX_QUEUE_SIZE:
            return f"max_queue_size ({register.max_queue_size}) must be at most {MAX_QUEUE_SIZE}"
        if register.max_concurrency > MAX_CONCURRENCY:
            return f"max_concurrency ({register.max_concurrency}) must be at most {MAX_CONCURRENCY}"
        return ""

    def register(self, session: NodeSession, register: pb.Register) -> list[str]:
        """Put a checked registration in force (it replaces the session's earlier one)."""
        current = self.nodes.get(session.node_id) is session
        if current:
            self._unindex(session)
        session.functions = {spec.name: spec for spec in register.functions}
        if current:
            self._index(session)
        session.max_queue_size = register.max_queue_size or 1000
        session.max_concurrency = register.max_concurrency or 1
        session.registered = True
        names = sorted(session.functions)
        shown = ", ".join(names[:LOGGED_NAMES]) + (f", ... and {len(names) - LOGGED_NAMES} more"
                                                   if len(names) > LOGGED_NAMES else "")
        logger.info("Node %s registered %d function(s): %s", session.node_id, len(names), shown)
        self.history.saw(session.node_id, names, session.labels)
        self._notify("easyremote_node_registered", node_id=session.node_id, functions=names)
        self.changed()
        return names

    def goodbye(self, session: NodeSession, reason: str) -> None:
        if session.leaving:
            return
        session.leaving = reason[:200] or "stopped"
        self._ready.clear()
        if session.calls:
            logger.info("Node %s is leaving (%s); waiting for its %d running call(s)",
                        session.node_id, session.leaving, len(session.calls))
        self.leave_when_idle(session)

    def leave_when_idle(self, session: NodeSession) -> None:
        """Close a leaving node's link once every call it had is answered."""
        if session.leaving and not session.calls:
            session.link.close(f"the node left ({session.leaving})")

    def ended(self, session: NodeSession, reason: str) -> None:
        """The session's link has ended: a leaving node is gone, any other is kept for ``node_grace``."""
        current = self.nodes.get(session.node_id) is session
        if session.registered and current:  # last seen now
            self.history.saw(session.node_id, list(session.functions), session.labels, left=bool(session.leaving))
        if not session.registered:  # it never served anything: nothing to wait for
            if current:
                self._remove(session)
                self.changed()
            logger.debug("Node %s left before registering: %s", session.node_id, reason)
            self._on_lost(session, reason)
            return
        if session.leaving:
            if current:
                self._remove(session)
                logger.info("Node %s left (%s)", session.node_id, session.leaving)
                self._notify("easyremote_node_lost", node_id=session.node_id, reason=f"left ({session.leaving})")
                self.changed()
            self._on_lost(session, f"it stopped before answering ({session.leaving})")
            return
        if current:
            session.lost_at = anyio.current_time()
            self._ready.clear()
            logger.warning("Node %s lost: %s", session.node_id, reason)
            self._notify("easyremote_node_lost", node_id=session.node_id, reason=reason)
            self._spawn(self._forget_later, session)
        self._on_lost(session, reason)

    async def _forget_later(self, session: NodeSession) -> None:
        with anyio.CancelScope() as session.forget_timer:
            await anyio.sleep(self.node_grace)
        if session.forget_timer.cancel_called:
            return  # the node came back
        if self.nodes.get(session.node_id) is session:
            self._remove(session)
            logger.info("Node %s did not come back within %g s; forgotten", session.node_id, self.node_grace)
            self.changed()

    def clear(self) -> None:
        for session in self.nodes.values():  # the gateway stops: every node it has was seen now
            if session.registered and session.lost_at is None:
                self.history.saw(session.node_id, list(session.functions), session.labels)
        self.nodes.clear()
        self._serving.clear()
        self._ready.clear()

    # -- queries --------------------------------------------------------------------------

    def node_list(self, request: pb.ListNodes, *, details: bool = True) -> pb.NodeList:
        """One page of the nodes, in node_id order after ``request.page_token``; ``details``
        adds each node's address (for admins). A page holds at most ``page_size`` nodes
        (``PAGE_SIZE`` by default, ``MAX_PAGE_SIZE`` at most) and about ``PAGE_BYTES``."""
        size = min(request.page_size or PAGE_SIZE, MAX_PAGE_SIZE)
        now = anyio.current_time()
        page = pb.NodeList(request_id=request.request_id)
        after = request.page_token
        taken = 0
        for node_id in heapq.nsmallest(size + 1, (node_id for node_id in self.nodes if node_id > after)):
            if len(page.nodes) == size or taken > PAGE_BYTES:
                page.next_page_token = page.nodes[-1].node_id
                break
            n = self.nodes[node_id]
            info = page.nodes.add(node_id=n.node_id, functions=sorted(n.functions), state=n.state,
                                  in_flight=len(n.calls), max_queue_size=n.max_queue_size,
                                  connected_for=now - n.connected_at, peer=n.peer if details else "")
            taken += info.ByteSize()
        return page

    def states(self) -> dict[str, str]:
        return {node_id: node.state for node_id, node in self.nodes.items()}
