"""The gateway: accepts nodes and clients, routes calls, evicts silent nodes."""

from __future__ import annotations

import errno
import functools
import hmac
import logging
import random
import signal
import uuid
from collections.abc import Generator, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from ._address import parse_address
from ._backend import HostTask, off_loop
from ._config import number, whole
from ._errors import ConfigurationError, ConnectionLostError, EasyRemoteError, ProtocolError
from ._link import Link
from ._logs import console_logging
from ._plugins import PluginManager, get_plugin_manager
from ._protocol import PROTOCOL_VERSION, ErrorCode, code_name, decode, encode, error_frame, pb
from ._resolve import resolve_transport, transport_name
from ._serving import StopSwitch, in_main_thread, run_blocking
from ._transport import DEFAULT_MAX_MESSAGE_SIZE, Connection, LinkOptions, Listener, TLSConfig, Transport

logger = logging.getLogger("easyremote.gateway")

#: How many times an idempotent call is sent to a node before a lost node fails it.
MAX_DELIVERIES = 3
#: How long starting (binding) or stopping (closing every session) may take.
STOP_TIMEOUT = 30.0
_TERMINAL = {"result", "error", "end"}


@dataclass(eq=False)
class _Peer:
    link: Link
    peer: str
    calls: dict[str, _Call] = field(default_factory=dict)


@dataclass(eq=False)
class _NodeSession(_Peer):
    node_id: str = ""
    functions: dict[str, pb.FunctionSpec] = field(default_factory=dict)
    max_queue_size: int = 1000
    registered: bool = False
    lost_at: float | None = None
    connected_at: float = 0.0
    forget_timer: anyio.CancelScope | None = None  # running while the gateway waits for it to return
    leaving: str = ""  # why the node said goodbye; it gets no new calls and leaves once they are answered

    @property
    def state(self) -> str:
        if self.lost_at is not None:
            return "reconnecting"
        if self.leaving:
            return "leaving"
        return "ready" if self.registered else "connecting"


@dataclass(eq=False)
class _Call:
    request: pb.CallRequest
    client: _Peer | None
    node: _NodeSession | None = None
    idempotent: bool = False
    asked_again: bool = False
    deliveries: int = 0
    started: float = 0.0
    buffered: list[pb.Envelope] = field(default_factory=list)  # answers held while the client is away


class Gateway:
    """Accepts nodes and clients on one port and routes calls between them.

    ``serve()`` blocks until Ctrl+C or SIGTERM (in the main thread) or until ``stop()``
    or ``close()`` from another thread; ``async with gateway:`` runs it in the
    background for embedding. ``port`` is the bound port once started.
    """

    def __init__(
        self,
        port: int = 8080,
        host: str = "0.0.0.0",
        *,
        transport: str | Transport | None = None,
        also_listen: Iterable[str] = (),
        heartbeat_timeout: float = 15.0,
        auth_token: str | Iterable[str] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        node_grace: float | None = None,
        startup_grace: float | None = None,
        handshake_timeout: float = 10.0,
        max_handshake_rate: float = 500.0,
        tls: TLSConfig | None = None,
        plugins: PluginManager | None = None,
    ) -> None:
        self._requested_port = whole("port", port, minimum=0)
        if port > 65535:
            raise ConfigurationError(f"port ({port}) must be at most 65535")
        if not isinstance(host, str) or not host:
            raise ConfigurationError(f"host must be a non-empty string, got {host!r}")
        self.host = host
        self.heartbeat_timeout = number("heartbeat_timeout", heartbeat_timeout, above=0)
        self.node_grace = self.heartbeat_timeout if node_grace is None else number("node_grace", node_grace, minimum=0)
        self.startup_grace = self.node_grace if startup_grace is None else number(
            "startup_grace", startup_grace, minimum=0)
        self._accepting_unknown_until = 0.0
        self.handshake_timeout = number("handshake_timeout", handshake_timeout, above=0)
        self.max_message_size = whole("max_message_size", max_message_size, minimum=1024)
        self.max_handshake_rate = number("max_handshake_rate", max_handshake_rate, minimum=1)
        if isinstance(auth_token, str):
            auth_token = [auth_token]
        self._tokens = [t.encode() for t in auth_token] if auth_token is not None else []
        if auth_token is not None and not all(self._tokens):
            raise ConfigurationError("auth_token must not be empty")
        self._transport_choice = transport
        self.transport_name = transport_name(transport)
        self._also_listen = [parse_address(text, parameter="also_listen", allow_port_zero=True) for text in also_listen]
        for extra in self._also_listen:
            if not extra.scheme:
                raise ConfigurationError(f"also_listen address {extra} must name its transport, e.g. tcp://{extra}")
        self._tls = tls
        self._plugins = plugins
        self.gateway_id = f"gateway-{uuid.uuid4().hex[:8]}"
        self._nodes: dict[str, _NodeSession] = {}
        self._owners: dict[str, bytes] = {}
        self._calls: dict[str, _Call] = {}
        self._round_robin: dict[str, int] = {}
        self._nodes_changed: anyio.Event | None = None
        self._admission_tokens = self.max_handshake_rate  # a full bucket: a burst of this many at once
        self._admission_at = 0.0
        self._turns: dict[str, float] = {}  # node_id -> when a node told to wait may come in
        self._listener: Listener | None = None
        self._listeners: list[tuple[str, str, Listener]] = []  # (transport name, host, listener)
        self._transport: Transport | None = None
        self._task_group: TaskGroup | None = None
        self._host_task: HostTask | None = None  # serves, from start() until stopped
        self._stop_switch = StopSwitch("gateway")
        self._stop_requested: anyio.Event | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._listener.port if self._listener is not None else self._requested_port

    @property
    def addresses(self) -> list[str]:
        """Every address it listens on, as ``transport://host:port``."""
        return [f"{name}://{host}:{listener.port}" for name, host, listener in self._listeners]

    @property
    def plugins(self) -> PluginManager:
        if self._plugins is None:
            self._plugins = get_plugin_manager()
        return self._plugins

    async def start(self) -> None:
        """Bind and start serving in the background, in a task the gateway owns.

        ``stop()`` may then be awaited from any task of this event loop, and ``close()``
        called from any other thread.
        """
        if self._host_task is not None:
            raise RuntimeError("the gateway is already running")
        self._stop_requested = self._stop_switch.bind()
        started = anyio.Event()
        host = HostTask.spawn(functools.partial(self._serve_in_host, started),
                              name=f"easyremote gateway on {self.host}:{self._requested_port}")
        self._host_task = host
        try:
            with anyio.fail_after(STOP_TIMEOUT):
                await started.wait()
        except BaseException:
            self._stop_requested.set()
            with anyio.CancelScope(shield=True):
                await self._shutdown()
            raise
        if not host.running:  # it failed to listen: raise why
            await self._shutdown()

    async def _serve_in_host(self, started: anyio.Event) -> None:
        """Listen, serve until a stop is requested, then close every listener and session."""
        assert self._stop_requested is not None
        options = LinkOptions(max_message_size=self.max_message_size, tls=self._tls)
        try:
            async with AsyncExitStack() as stack:
                endpoints = [(self._resolve(self._transport_choice), self.host, self._requested_port)]
                for extra in self._also_listen:
                    endpoints.append((self._resolve(extra.scheme), extra.host, extra.port))
                self._transport = endpoints[0][0]
                self._nodes_changed = anyio.Event()
                self._admission_at = anyio.current_time()
                for transport, host, port in endpoints:
                    stack.push_async_callback(transport.aclose)
                    try:
                        listener = await transport.listen(host, port, options)
                    except OSError as exc:
                        error = _listen_error(exc, transport.name, host, port)
                        if error is exc:
                            raise
                        raise error from None
                    stack.push_async_callback(listener.aclose)
                    self._listeners.append((transport.name, host, listener))
                # Entered last, so it exits first: its tasks end before the listeners close.
                self._task_group = await stack.enter_async_context(anyio.create_task_group())
                for _, _, listener in self._listeners:
                    self._task_group.start_soon(listener.serve, self._handle_connection)
                self._listener = self._listeners[0][2]
                if self.startup_grace > 0:
                    # Just after a (re)start nodes are still on their way back: a call for a
                    # function nobody has registered yet waits for them this long.
                    self._accepting_unknown_until = anyio.current_time() + self.startup_grace
                    self._task_group.start_soon(self._end_startup_grace)
                self._log_listening()
                started.set()
                await self._stop_requested.wait()
                self._task_group.cancel_scope.cancel()
            logger.info("Gateway stopped")
        except Exception as exc:
            if started.is_set():
                logger.error("Gateway stopped after a failure: %s: %s", type(exc).__name__, exc)
            raise
        finally:
            self._listeners.clear()
            self._nodes.clear()
            self._calls.clear()
            self._stop_requested.set()  # wakes serve() when the gateway ended by itself
            started.set()
            self._stop_switch.release()

    def _resolve(self, choice: str | Transport | None) -> Transport:
        return resolve_transport(self.plugins, choice, tls=self._tls)

    def _log_listening(self) -> None:
        for name, host, listener in self._listeners:
            logger.info("EasyRemote gateway listening on %s:%d (transport %s)", host, listener.port, name)
        if not self._tokens:
            logger.warning(
                "No auth_token is set: anyone who can reach %s:%d can register nodes and run code on them",
                self.host, self.port,
            )

    async def _end_startup_grace(self) -> None:
        await anyio.sleep(self.startup_grace)
        self._wake_waiters()

    def stop(self) -> GatewayStop:
        """Stop accepting, close every session, and fail the calls in flight.

        Callable from any thread: the stop is requested as soon as ``stop()`` is called.
        ``await gateway.stop()`` in the gateway's event loop also waits until it has
        stopped; from another thread, ``close()`` does.
        """
        return GatewayStop(self)

    async def _shutdown(self) -> None:
        """Wait, in the gateway's event loop, until the stop requested has completed."""
        host = self._host_task
        if host is None:
            return
        try:
            token = self._stop_switch.token
            if token is not None and off_loop(token):  # awaited on another event loop
                await anyio.to_thread.run_sync(self._stop_switch.wait, STOP_TIMEOUT)
                return
            with anyio.move_on_after(STOP_TIMEOUT, shield=True) as waiting:
                await host.wait()
            if waiting.cancelled_caught:
                logger.warning("The gateway did not stop within %g s; cancelling it", STOP_TIMEOUT)
                await host.aclose()
        finally:
            if self._host_task is host and not host.running:
                self._host_task = None

    def close(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the gateway from another thread and wait until it has stopped (``serve()`` has returned).

        Does nothing when it is not running. Raises ``TimeoutError`` if it has not
        stopped within ``timeout`` seconds, and ``RuntimeError`` on the gateway's own
        event loop, where ``await gateway.stop()`` is the way.
        """
        self._stop_switch.stop_and_wait(timeout)

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def serve(self) -> None:
        """Serve until Ctrl+C or SIGTERM (in the main thread), or ``stop()``/``close()`` from another thread.

        Runs an event loop of its own in the calling thread, so it works in any thread;
        signal handlers are installed only in the main thread. A failure (e.g. the port
        is taken: ``OSError``) is raised as one exception, never an exception group.
        """
        with console_logging(), self._stop_switch.serving():
            run_blocking(self._serve_until_stopped, "the gateway")

    async def _serve_until_stopped(self) -> None:
        async with self:
            assert self._stop_requested is not None
            if not in_main_thread():
                await self._stop_requested.wait()
                return
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._stop_on_signal)
                await self._stop_requested.wait()
                tg.cancel_scope.cancel()

    async def _stop_on_signal(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logger.info("Received %s, shutting down", signal.Signals(signum).name)
                self._stop_switch.request()
                return

    # -- sessions -------------------------------------------------------------------------

    async def _handle_connection(self, connection: Connection) -> None:
        try:
            with anyio.fail_after(self.handshake_timeout):
                hello = await self._receive_hello(connection)
        except ProtocolError as exc:
            logger.warning("Refused %s: ProtocolError: %s", connection.peer, exc)
            await _send_quietly(connection, pb.Envelope(reject=pb.Reject(
                reason=pb.Reject.REASON_PROTOCOL, message=str(exc), protocol_version=PROTOCOL_VERSION)))
            return
        except (TimeoutError, anyio.EndOfStream, EasyRemoteError):
            return  # a peer that left or never spoke (e.g. a reachability check)
        refusal = self._check_hello(hello)
        if refusal is not None:
            logger.warning("Refused %s from %s: %s", _role(hello), connection.peer, refusal.message)
            await _send_quietly(connection, pb.Envelope(reject=refusal))
            return
        wait = self._admission_wait(hello.node_id if hello.role == pb.ROLE_NODE else "")
        if wait > 0:
            logger.info("Busy: asked %s to come back in %.1f s", _role(hello), wait)
            await _send_quietly(connection, pb.Envelope(go_away=pb.GoAway(
                retry_after_ms=int(wait * 1000), reason="gateway is busy accepting other peers")))
            return
        if hello.role == pb.ROLE_NODE:
            await self._serve_node(connection, hello)
        else:
            await self._serve_client(connection, hello)

    def _admission_wait(self, node_id: str) -> float:
        """0 when a new session may start now, else seconds until its turn (a token bucket).

        A node told to wait keeps its turn: when it comes back at that time it is let
        in without taking another, so many nodes arriving together are spread out
        evenly instead of all retrying at once. Clients wait without a turn.
        """
        now = anyio.current_time()
        turn = self._turns.pop(node_id, None) if node_id else None
        if turn is not None:
            if now >= turn - 0.05:
                return 0.0
            self._turns[node_id] = turn
            return turn - now
        rate = self.max_handshake_rate
        self._admission_tokens = min(rate, self._admission_tokens + (now - self._admission_at) * rate)
        self._admission_at = now
        if self._admission_tokens >= 1:
            self._admission_tokens -= 1
            return 0.0
        wait = (1 - self._admission_tokens) / rate * random.uniform(1.0, 1.2)
        if node_id:
            self._admission_tokens -= 1  # the token of its turn
            if len(self._turns) > 4 * rate:
                self._turns = {key: at for key, at in self._turns.items() if at > now - 60}
            self._turns[node_id] = now + wait
        return wait

    async def _receive_hello(self, connection: Connection) -> pb.Hello:
        envelope = decode(await connection.receive())
        if envelope.WhichOneof("body") != "hello":
            raise ProtocolError(f"expected a hello frame first, got {envelope.WhichOneof('body')!r}")
        return envelope.hello

    def _check_hello(self, hello: pb.Hello) -> pb.Reject | None:
        if hello.role not in (pb.ROLE_NODE, pb.ROLE_CLIENT):
            return pb.Reject(reason=pb.Reject.REASON_PROTOCOL, message="hello names no role (node or client)")
        token = hello.token.encode()
        if self._tokens:
            if not any(hmac.compare_digest(token, expected) for expected in self._tokens):
                return pb.Reject(reason=pb.Reject.REASON_AUTH, message="missing or wrong auth token")
        if hello.role == pb.ROLE_NODE:
            if not hello.node_id or len(hello.node_id) > 200:
                return pb.Reject(reason=pb.Reject.REASON_BAD_REQUEST, message="a node needs a node_id of 1-200 characters")
            owner = self._owners.get(hello.node_id)
            if owner is not None and not hmac.compare_digest(owner, token):
                return pb.Reject(reason=pb.Reject.REASON_AUTH,
                                 message=f"node_id {hello.node_id!r} belongs to a peer with another token")
        return None

    def _new_link(self, connection: Connection, hello: pb.Hello, on_frame, name: str) -> Link:
        timeout = max(self.heartbeat_timeout, 2 * hello.heartbeat_interval)
        return Link(
            connection,
            on_frame=on_frame,
            heartbeat_interval=hello.heartbeat_interval or 5.0,
            heartbeat_timeout=timeout,
            health_check_interval=timeout,
            probes=[self.plugins.health_probe("heartbeat")],
            send_heartbeats=False,
            peer_name=name,
            many_peers=True,
        )

    def _welcome(self, link: Link) -> None:
        link.send(pb.Envelope(welcome=pb.Welcome(
            protocol_version=PROTOCOL_VERSION, session_id=uuid.uuid4().hex,
            gateway_id=self.gateway_id, max_message_size=self.max_message_size)))

    async def _serve_node(self, connection: Connection, hello: pb.Hello) -> None:
        node_id = hello.node_id
        session = _NodeSession(link=None, peer=connection.peer, node_id=node_id,  # type: ignore[arg-type]
                               connected_at=anyio.current_time())
        session.link = self._new_link(connection, hello, lambda env: self._on_node_frame(session, env),
                                      f"node {node_id}")
        self._owners.setdefault(node_id, hello.token.encode())
        old = self._nodes.get(node_id)
        self._nodes[node_id] = session
        if old is not None:
            reason = "replaced by a new session of the same node"
            if old.lost_at is None:
                logger.warning("Node %s lost: %s", node_id, reason)
                self.plugins.notify("easyremote_node_lost", gateway_id=self.gateway_id, node_id=node_id,
                                    reason=reason)
            old.link.close(reason)
            if old.forget_timer is not None:
                old.forget_timer.cancel()
            self._settle_lost_node_calls(old, "the node reconnected (its earlier session was replaced)")
        self._welcome(session.link)
        logger.info("Node %s connected from %s", node_id, connection.peer)
        session.link.on_end = lambda reason: self._node_session_ended(session, reason)
        await session.link.run()

    async def _serve_client(self, connection: Connection, hello: pb.Hello) -> None:
        client = _Peer(link=None, peer=connection.peer)  # type: ignore[arg-type]
        client.link = self._new_link(connection, hello, lambda env: self._on_client_frame(client, env),
                                     f"client {connection.peer}")
        self._welcome(client.link)
        logger.debug("Client connected from %s", connection.peer)
        client.link.on_end = lambda reason: self._client_session_ended(client)
        await client.link.run()

    # -- node frames ----------------------------------------------------------------------

    def _on_node_frame(self, session: _NodeSession, envelope: pb.Envelope) -> None:
        kind = envelope.WhichOneof("body")
        if kind == "register":
            self._register(session, envelope.register)
        elif kind == "goodbye":
            self._goodbye(session, envelope.goodbye.reason or "stopped")
        elif kind in ("result", "error", "item", "end"):
            call_id = getattr(envelope, kind).call_id
            call = session.calls.get(call_id)
            if call is None:
                return  # an answer to a call that was cancelled or re-routed
            if kind == "error" and envelope.error.code == ErrorCode.CODE_STOPPING:
                session.calls.pop(call_id, None)  # it never ran there: route it again
                call.node = None
                call.deliveries -= 1
                self._dispatch(call)
                self._leave_when_idle(session)
            elif kind in _TERMINAL:
                self._finish(call, envelope)
            else:
                self._deliver(call, envelope)
        else:
            logger.debug("Ignoring a %s frame from node %s", kind, session.node_id)

    def _register(self, session: _NodeSession, register: pb.Register) -> None:
        session.functions = {spec.name: spec for spec in register.functions}
        session.max_queue_size = register.max_queue_size or 1000
        session.registered = True
        names = sorted(session.functions)
        session.link.send(pb.Envelope(registered=pb.Registered(functions=names)))
        logger.info("Node %s registered %d function(s): %s", session.node_id, len(names), ", ".join(names))
        self.plugins.notify("easyremote_node_registered", gateway_id=self.gateway_id,
                            node_id=session.node_id, functions=names)
        self._wake_waiters()

    def _goodbye(self, session: _NodeSession, reason: str) -> None:
        if session.leaving:
            return
        session.leaving = reason[:200]
        if session.calls:
            logger.info("Node %s is leaving (%s); waiting for its %d running call(s)",
                        session.node_id, session.leaving, len(session.calls))
        self._leave_when_idle(session)

    def _leave_when_idle(self, session: _NodeSession) -> None:
        if session.leaving and not session.calls:
            session.link.close(f"the node left ({session.leaving})")

    def _node_session_ended(self, session: _NodeSession, reason: str) -> None:
        if session.leaving:
            if self._nodes.get(session.node_id) is session:
                del self._nodes[session.node_id]
                logger.info("Node %s left (%s)", session.node_id, session.leaving)
                self.plugins.notify("easyremote_node_lost", gateway_id=self.gateway_id,
                                    node_id=session.node_id, reason=f"left ({session.leaving})")
                self._wake_waiters()
            self._settle_lost_node_calls(session, f"it stopped before answering ({session.leaving})")
            return
        if self._nodes.get(session.node_id) is session:
            session.lost_at = anyio.current_time()
            logger.warning("Node %s lost: %s", session.node_id, reason)
            self.plugins.notify("easyremote_node_lost", gateway_id=self.gateway_id,
                                node_id=session.node_id, reason=reason)
            if self._task_group is not None:
                self._task_group.start_soon(self._forget_node_later, session)
        self._settle_lost_node_calls(session, reason)

    def _settle_lost_node_calls(self, session: _NodeSession, reason: str) -> None:
        for call in list(session.calls.values()):
            session.calls.pop(call.request.call_id, None)
            call.node = None
            if call.idempotent and call.deliveries < MAX_DELIVERIES:
                logger.info("Re-routing idempotent call %s of %r after node %s was lost",
                            call.request.call_id, call.request.function, session.node_id)
                self._dispatch(call)
            else:
                self._finish(call, error_frame(
                    call.request.call_id, ErrorCode.CODE_NODE_LOST,
                    f"node {session.node_id} was lost while running {call.request.function!r}: {reason}",
                    node_id=session.node_id))

    async def _forget_node_later(self, session: _NodeSession) -> None:
        with anyio.CancelScope() as session.forget_timer:
            await anyio.sleep(self.node_grace)
        if session.forget_timer.cancel_called:
            return  # the node came back
        if self._nodes.get(session.node_id) is session:
            del self._nodes[session.node_id]
            logger.info("Node %s did not come back within %s s; forgotten", session.node_id, _g(self.node_grace))
            self._wake_waiters()

    # -- client frames --------------------------------------------------------------------

    def _on_client_frame(self, client: _Peer, envelope: pb.Envelope) -> None:
        kind = envelope.WhichOneof("body")
        if kind == "call":
            self._accept_call(client, envelope.call)
        elif kind == "cancel":
            call = self._calls.get(envelope.cancel.call_id)
            if call is not None and call.client is client:
                if call.node is not None:
                    call.node.link.send(envelope)
                self._forget(call)
        elif kind == "list_nodes":
            client.link.send(pb.Envelope(node_list=self._node_list(envelope.list_nodes.request_id)))
        else:
            logger.debug("Ignoring a %s frame from client %s", kind, client.peer)

    def _accept_call(self, client: _Peer, request: pb.CallRequest) -> None:
        existing = self._calls.get(request.call_id)
        if existing is not None:  # the client reconnected and asks again: re-attach
            existing.client = client
            client.calls[request.call_id] = existing
            held, existing.buffered = existing.buffered, []
            for envelope in held:
                client.link.send(envelope)
                if envelope.WhichOneof("body") in _TERMINAL:
                    self._forget(existing)
            return
        # A call asked again (attempt > 1) that this gateway does not know was lost with the
        # link (or with a gateway restart); _dispatch decides, once a node says whether the
        # function is idempotent, whether it may run again.
        call = _Call(request=request, client=client, started=anyio.current_time(),
                     asked_again=request.attempt > 1)
        self._calls[request.call_id] = call
        client.calls[request.call_id] = call
        self._dispatch(call)

    def _dispatch(self, call: _Call) -> None:
        """Send the call to a node now, wait for one that is coming back, or fail it."""
        request = call.request
        node, problem = self._pick(request.function, request.node_id)
        if node is not None:
            spec = node.functions[request.function]
            call.idempotent = spec.idempotent
            if call.asked_again and call.deliveries == 0 and not spec.idempotent:
                self._finish(call, error_frame(
                    request.call_id, ErrorCode.CODE_CANCELLED,
                    f"call {request.call_id} of {request.function!r} was lost with the link to the gateway; "
                    "it may or may not have run, and it is not run again because the function is not "
                    "idempotent"))
                return
            call.node = node
            call.deliveries += 1
            node.calls[request.call_id] = call
            request.attempt = call.deliveries
            node.link.send(pb.Envelope(call=request))
            self.plugins.notify("easyremote_call_started", gateway_id=self.gateway_id,
                                call_id=request.call_id, function=request.function, node_id=node.node_id)
        elif problem == "wait" and self._task_group is not None:
            self._task_group.start_soon(self._wait_for_node, call)
        else:
            code, message = problem
            self._finish(call, error_frame(request.call_id, code, message))

    def _pick(self, function: str, node_id: str) -> tuple[_NodeSession | None, object]:
        if node_id:
            node = self._nodes.get(node_id)
            if node is None:
                if anyio.current_time() < self._accepting_unknown_until:
                    return None, "wait"
                return None, (ErrorCode.CODE_NO_NODE, f"node {node_id!r} is not connected")
            if function not in node.functions:
                return None, (ErrorCode.CODE_NO_NODE, f"node {node_id!r} does not serve {function!r}")
            candidates = [node]
        else:
            candidates = [n for n in self._nodes.values() if function in n.functions]
        if not candidates:
            if anyio.current_time() < self._accepting_unknown_until:
                return None, "wait"
            return None, (ErrorCode.CODE_NO_NODE, f"no node serves {function!r}")
        candidates = [n for n in candidates if not n.leaving]
        if not candidates:
            return None, (ErrorCode.CODE_NO_NODE, f"no node serves {function!r} (its node is stopping)")
        ready = [n for n in candidates if n.lost_at is None and n.registered]
        if not ready:
            return None, "wait"
        open_nodes = [n for n in ready if len(n.calls) < n.max_queue_size]
        if not open_nodes:
            return None, (ErrorCode.CODE_NODE_BUSY, f"every node serving {function!r} has a full queue (max_queue_size)")
        turn = self._round_robin.get(function, 0)
        self._round_robin[function] = turn + 1
        return open_nodes[turn % len(open_nodes)], None

    async def _wait_for_node(self, call: _Call) -> None:
        request = call.request
        limit = request.timeout if request.timeout > 0 else self.node_grace
        with anyio.move_on_after(limit):
            while call.node is None and self._calls.get(request.call_id) is call:
                assert self._nodes_changed is not None
                await self._nodes_changed.wait()
                node, problem = self._pick(request.function, request.node_id)
                if node is not None or problem != "wait":
                    self._dispatch(call)
                    return
        if call.node is None and self._calls.get(request.call_id) is call:
            self._finish(call, error_frame(request.call_id, ErrorCode.CODE_NO_NODE,
                                           f"no node serving {request.function!r} came back in time"))

    def _wake_waiters(self) -> None:
        if self._nodes_changed is not None:
            self._nodes_changed.set()
            self._nodes_changed = anyio.Event()

    def _client_session_ended(self, client: _Peer) -> None:
        for call in list(client.calls.values()):
            if call.client is client:
                call.client = None
        if client.calls and self._task_group is not None:
            self._task_group.start_soon(self._forget_orphans_later, client)

    async def _forget_orphans_later(self, client: _Peer) -> None:
        await anyio.sleep(self.node_grace)
        for call in list(client.calls.values()):
            if call.client is None and self._calls.get(call.request.call_id) is call:
                if call.node is not None:
                    call.node.link.send(pb.Envelope(cancel=pb.Cancel(
                        call_id=call.request.call_id, reason="the caller did not come back")))
                self._forget(call)
        client.calls.clear()

    # -- answers --------------------------------------------------------------------------

    def _deliver(self, call: _Call, envelope: pb.Envelope) -> None:
        if call.client is not None:
            call.client.link.send(envelope)
        else:
            call.buffered.append(envelope)

    def _finish(self, call: _Call, envelope: pb.Envelope) -> None:
        self._deliver(call, envelope)
        outcome = "ok" if envelope.WhichOneof("body") != "error" else code_name(envelope.error.code)
        node_id = call.node.node_id if call.node is not None else envelope.error.node_id
        self.plugins.notify("easyremote_call_finished", gateway_id=self.gateway_id, call_id=call.request.call_id,
                            function=call.request.function, node_id=node_id, outcome=outcome,
                            duration=anyio.current_time() - call.started)
        if call.node is not None:
            call.node.calls.pop(call.request.call_id, None)
            self._leave_when_idle(call.node)
        if call.client is not None:
            self._forget(call)
        # else: kept, answer held, until the caller re-attaches or _forget_orphans_later drops it

    def _forget(self, call: _Call) -> None:
        call_id = call.request.call_id
        if self._calls.get(call_id) is call:
            del self._calls[call_id]
        if call.node is not None:
            call.node.calls.pop(call_id, None)
            self._leave_when_idle(call.node)
        if call.client is not None:
            call.client.calls.pop(call_id, None)

    # -- queries --------------------------------------------------------------------------

    def _node_list(self, request_id: str) -> pb.NodeList:
        now = anyio.current_time()
        return pb.NodeList(request_id=request_id, nodes=[
            pb.NodeInfo(node_id=n.node_id, functions=sorted(n.functions), state=n.state, in_flight=len(n.calls),
                        max_queue_size=n.max_queue_size, connected_for=now - n.connected_at, peer=n.peer)
            for n in self._nodes.values()
        ])

    def nodes(self) -> dict[str, str]:
        """``{node_id: state}`` of every node the gateway knows."""
        return {node_id: node.state for node_id, node in self._nodes.items()}


async def _send_quietly(connection: Connection, envelope: pb.Envelope) -> None:
    try:
        with anyio.move_on_after(2):
            await connection.send(encode(envelope))
    except (ConnectionLostError, EasyRemoteError):
        pass


def _role(hello: pb.Hello) -> str:
    return f"node {hello.node_id!r}" if hello.role == pb.ROLE_NODE else "client"


def _g(value: float) -> str:
    return f"{value:g}"


class GatewayStop:
    """What ``Gateway.stop()`` returns: the stop is requested when it is made; awaiting it waits until done.

    Not a coroutine, so calling ``gateway.stop()`` from another thread without awaiting
    it is a plain request and no "never awaited" warning.
    """

    __slots__ = ("_gateway",)

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        gateway._stop_switch.request()

    def __await__(self) -> Generator[Any, None, None]:
        return self._gateway._shutdown().__await__()


def _listen_error(exc: OSError, transport: str, host: str, port: int) -> OSError:
    """``exc`` with the address in its words (the socket module's say only "Address already in use")."""
    if exc.errno == errno.EADDRINUSE:
        return OSError(exc.errno, f"port {port} on {host} is already in use (transport {transport}); "
                                  "is another gateway running?")
    if exc.errno is not None:
        return OSError(exc.errno, f"cannot listen on {host}:{port} (transport {transport}): {exc.strerror}")
    return exc
