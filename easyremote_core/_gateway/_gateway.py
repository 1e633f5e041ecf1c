"""The gateway: listens, admits peers, and wires each session to the rooms that own its frames."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from .._address import parse_address
from .._backend import clock
from .._config import number, whole
from .._errors import ConfigurationError, EasyRemoteError, ProtocolError
from .._heartbeat import SilenceWatch
from .._link import FrameHandler, Link
from .._logs import Quieter, capped
from .._plugins import PluginManager, get_plugin_manager
from .._protocol import PROTOCOL_VERSION, Attachment, pb
from .._resolve import resolve_transport, transport_name
from .._routing import RoutingPolicy
from .._transport import DEFAULT_MAX_MESSAGE_SIZE, Connection, LinkOptions, Listener, TLSConfig, Transport
from ._admission import Admission, role_of, send_quietly
from ._calls import CallTable
from ._history import History
from ._hosting import ServingLifecycle, open_listeners
from ._identities import ANYONE, Credential, Identities
from ._registry import Registry
from ._router import Router
from ._sessions import NodeSession, Peer

logger = capped(logging.getLogger("easyremote.gateway"))

ROUTING_ENV = "EASYREMOTE_ROUTING"
DEFAULT_ROUTING = "least-loaded"
#: The smallest default max_peer_buffer; the default is this or 4 × max_message_size.
MIN_PEER_BUFFER = 64 * 1024 * 1024


class Gateway(ServingLifecycle):
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
        credentials: Mapping[str, Mapping[str, Any]] | str | os.PathLike[str] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_peer_buffer: int | None = None,
        node_grace: float | None = None,
        startup_grace: float | None = None,
        state_file: str | os.PathLike[str] | None = None,
        handshake_timeout: float = 10.0,
        max_handshake_rate: float = 500.0,
        max_pending_handshakes: int = 1000,
        max_functions: int = 10_000,
        routing: str | RoutingPolicy | None = None,
        tls: TLSConfig | None = None,
        plugins: PluginManager | None = None,
    ) -> None:
        super().__init__()
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
        self.handshake_timeout = number("handshake_timeout", handshake_timeout, above=0)
        self.max_message_size = whole("max_message_size", max_message_size, minimum=1024)
        self.max_peer_buffer = (max(MIN_PEER_BUFFER, 4 * self.max_message_size) if max_peer_buffer is None
                                else whole("max_peer_buffer", max_peer_buffer, minimum=self.max_message_size))
        self.max_handshake_rate = number("max_handshake_rate", max_handshake_rate, minimum=1)
        self.max_pending_handshakes = whole("max_pending_handshakes", max_pending_handshakes, minimum=1)
        self.max_functions = whole("max_functions", max_functions, minimum=1)
        if state_file is not None and not isinstance(state_file, (str, os.PathLike)):
            raise ConfigurationError(f"state_file must be a path or None, got {state_file!r}")
        self.state_file = os.fspath(state_file) if state_file is not None else None
        #: What it has served: nodes, functions, labels, last seen; in state_file when one is given.
        self._history = History(self.state_file)
        self._history_opened = False
        self._identities = Identities(auth_token, credentials)
        self._transport_choice = transport
        self.transport_name = transport_name(transport)
        self._also_listen = [parse_address(text, parameter="also_listen", allow_port_zero=True) for text in also_listen]
        for extra in self._also_listen:
            if not extra.scheme:
                raise ConfigurationError(f"also_listen address {extra} must name its transport, e.g. tcp://{extra}")
        self._tls = tls
        self._plugins = plugins
        self._routing = self._resolve_routing(routing)
        self.gateway_id = f"gateway-{uuid.uuid4().hex[:8]}"
        self._admission = Admission(handshake_timeout=self.handshake_timeout, rate=self.max_handshake_rate,
                                    max_pending=self.max_pending_handshakes)
        self._quiet = Quieter(logger)
        self._registry: Registry | None = None  # the rooms that need an event loop are made in start()
        self._router: Router | None = None
        self._calls: CallTable | None = None
        self._listener: Listener | None = None
        self._listeners: list[tuple[str, str, Listener]] = []  # (transport name, host, listener)
        self._transport: Transport | None = None
        self._task_group: TaskGroup | None = None
        self._silence = SilenceWatch()  # the heartbeat timeout of every link; its task runs while serving

    def _resolve_routing(self, choice: str | RoutingPolicy | None) -> RoutingPolicy:
        if isinstance(choice, RoutingPolicy):
            return choice
        name = choice or os.environ.get(ROUTING_ENV) or DEFAULT_ROUTING
        return self.plugins.routing_policy(name)

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

    @property
    def routing(self) -> RoutingPolicy:
        """The routing policy; it may be replaced while the gateway runs."""
        return self._routing

    @routing.setter
    def routing(self, policy: RoutingPolicy) -> None:
        if not isinstance(policy, RoutingPolicy):
            raise ConfigurationError(f"routing must be a RoutingPolicy, got {policy!r}")
        self._routing = policy
        if self._router is not None:
            self._router.policy = policy

    async def _serve_in_host(self, started: anyio.Event) -> None:
        """Listen, serve until a stop is requested, then close every listener and session."""
        assert self._stop_requested is not None
        options = LinkOptions(max_message_size=self.max_message_size, tls=self._tls,
                              handshake_timeout=self.handshake_timeout,
                              max_pending_handshakes=self.max_pending_handshakes)
        try:
            async with AsyncExitStack() as stack:
                endpoints = [(self._resolve(self._transport_choice), self.host, self._requested_port)]
                for extra in self._also_listen:
                    endpoints.append((self._resolve(extra.scheme), extra.host, extra.port))
                self._transport = endpoints[0][0]
                if not self._history_opened:  # once: an in-memory history lives as long as the Gateway
                    await self._history.open()
                    self._history_opened = True
                self._make_rooms()
                self._call_table.now = clock()  # read twice per call: resolved once
                self._listeners.extend(await open_listeners(stack, endpoints, options))
                # Entered last, so it exits first: its tasks end before the listeners close.
                self._task_group = await stack.enter_async_context(anyio.create_task_group())
                self._silence = SilenceWatch()  # anew each start: links of a stopped run are gone
                self._task_group.start_soon(self._silence.run)
                for _, _, listener in self._listeners:
                    self._task_group.start_soon(listener.serve, self._handle_connection)
                self._listener = self._listeners[0][2]
                self._task_group.start_soon(self._history.run)
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
            if self._registry is not None:
                self._registry.clear()
            if self._calls is not None:
                self._calls.clear()
            self._stop_requested.set()  # wakes serve() when the gateway ended by itself
            started.set()
            self._stop_switch.release()

    def _resolve(self, choice: str | Transport | None) -> Transport:
        return resolve_transport(self.plugins, choice, tls=self._tls)

    def _log_listening(self) -> None:
        for name, host, listener in self._listeners:
            logger.info("EasyRemote gateway listening on %s:%d (transport %s)", host, listener.port, name)
        if self._identities.open:
            logger.warning(
                "No auth_token is set: anyone who can reach %s:%d can register nodes and run code on them",
                self.host, self.port,
            )
        elif self._identities.shared and not self._identities.has_credentials:
            logger.warning(
                "auth_token is one secret for every role: anyone who holds it can act as a node and "
                "answer calls with pickles that run code on clients; give nodes and clients their own "
                "credentials (credentials=, easyremote token new)")

    def _make_rooms(self) -> None:
        self._admission.start()
        self._registry = Registry(gateway_id=self.gateway_id, node_grace=self.node_grace,
                                  max_functions=self.max_functions,
                                  plugins=lambda: self.plugins, spawn=self._spawn,
                                  on_lost=lambda session, reason: self._call_table.node_lost(session, reason),
                                  history=self._history)
        self._router = Router(self._registry, self._routing, self._history)
        self._calls = CallTable(gateway_id=self.gateway_id, registry=self._registry, router=self._router,
                                grace=self.node_grace, notify=self._notify, spawn=self._spawn,
                                max_held_bytes=self.max_peer_buffer, quiet=self._quiet,
                                startup_grace=self.startup_grace)

    @property
    def _call_table(self) -> CallTable:
        assert self._calls is not None, "the gateway is not running"
        return self._calls

    @property
    def _nodes(self) -> Registry:
        assert self._registry is not None, "the gateway is not running"
        return self._registry

    def _spawn(self, func: Callable[..., Any], *args: Any) -> None:
        if self._task_group is not None:
            self._task_group.start_soon(func, *args)

    def _notify(self, hook: str, **kwargs: Any) -> None:
        self.plugins.notify(hook, gateway_id=self.gateway_id, **kwargs)

    # -- sessions -------------------------------------------------------------------------

    async def _handle_connection(self, connection: Connection) -> None:
        hello: pb.Hello | None = None
        try:
            with self._admission.pending.slot():
                hello = await self._admission.receive_hello(connection)
        except ProtocolError as exc:
            self._quiet.log(logging.WARNING, connection.peer, "protocol", "Refused %s: ProtocolError: %s",
                            connection.peer, exc)
            await send_quietly(connection, pb.Envelope(reject=pb.Reject(
                reason=pb.Reject.REASON_PROTOCOL, message=str(exc), protocol_version=PROTOCOL_VERSION)))
            return
        except (TimeoutError, anyio.EndOfStream, EasyRemoteError):
            return  # a peer that left or never spoke (e.g. a reachability check)
        if hello is None:  # closed to make room for newer handshakes
            self._quiet.log(logging.WARNING, connection.peer, "pending", "Closed a connection from %s that had "
                            "not said hello: more than max_pending_handshakes (%d) waited",
                            connection.peer, self.max_pending_handshakes)
            return
        refusal = self._admission.check(hello)
        credential = ANYONE
        if refusal is None:
            found = self._identities.authenticate(hello)
            refusal, credential = (found, ANYONE) if isinstance(found, pb.Reject) else (None, found)
        if refusal is not None:
            self._quiet.log(logging.WARNING, connection.peer, f"refused {refusal.reason}", "Refused %s from %s: %s",
                            role_of(hello), connection.peer, refusal.message)
            await send_quietly(connection, pb.Envelope(reject=refusal))
            return
        wait = self._admission.wait(hello.node_id if hello.role == pb.ROLE_NODE else "")
        if wait > 0:
            self._quiet.log(logging.INFO, connection.peer, "busy", "Busy: asked %s to come back in %.1f s",
                            role_of(hello), wait)
            await send_quietly(connection, pb.Envelope(go_away=pb.GoAway(
                retry_after_ms=int(wait * 1000), reason="gateway is busy accepting other peers")))
            return
        if hello.role == pb.ROLE_NODE:
            await self._serve_node(connection, hello, credential)
        else:
            await self._serve_client(connection, hello, credential)

    def _new_link(self, connection: Connection, hello: pb.Hello, on_frame: FrameHandler,
                  name: str, on_end: Callable[[str], None]) -> Link:
        timeout = max(self.heartbeat_timeout, 2 * hello.heartbeat_interval)
        return Link(
            connection,
            on_frame=on_frame,
            heartbeat_interval=hello.heartbeat_interval or 5.0,
            heartbeat_timeout=timeout,
            health_check_interval=timeout,
            probes=[],
            silence_watch=self._silence,  # the heartbeat timeout of every link, in one task
            send_heartbeats=False,
            peer_name=name,
            many_peers=True,
            max_buffer=self.max_peer_buffer,
            quiet=self._quiet,
            on_end=on_end,
        )

    def _welcome(self, link: Link, owner: bytes = b"") -> None:
        link.send(pb.Envelope(welcome=pb.Welcome(
            protocol_version=PROTOCOL_VERSION, session_id=uuid.uuid4().hex,
            gateway_id=self.gateway_id, max_message_size=self.max_message_size, owner=owner)))

    async def _serve_node(self, connection: Connection, hello: pb.Hello, credential: Credential) -> None:
        session = NodeSession(link=None, peer=connection.peer, node_id=hello.node_id,  # type: ignore[arg-type]
                              connected_at=anyio.current_time(), credential=credential,
                              incarnation=hello.incarnation[:64])
        session.link = self._new_link(
            connection, hello, lambda envelope, attachment: self._on_node_frame(session, envelope, attachment),
            f"node {hello.node_id}", lambda reason: self._nodes.ended(session, reason))
        old = self._nodes.connect(session)
        self._welcome(session.link)
        logger.info("Node %s connected from %s", hello.node_id, connection.peer)
        if old is not None and old.incarnation == session.incarnation and old.abandoned:
            for call_id in old.abandoned:  # their callers were told they were lost: stop them
                session.link.send(pb.Envelope(cancel=pb.Cancel(
                    call_id=call_id, reason="the gateway reported it lost when the node's link ended")))
            old.abandoned = None
        await session.link.run()

    async def _serve_client(self, connection: Connection, hello: pb.Hello, credential: Credential) -> None:
        key = hello.client_key or secrets.token_bytes(16)
        client = Peer(link=None, peer=connection.peer, credential=credential,  # type: ignore[arg-type]
                      key=key, owner=hashlib.sha256(key + b"\0" + credential.name.encode()).digest()[:16])
        client.link = self._new_link(
            connection, hello, lambda envelope, attachment: self._on_client_frame(client, envelope, attachment),
            f"client {connection.peer}", lambda reason: self._call_table.client_ended(client))
        self._welcome(client.link, owner=client.owner)
        logger.debug("Client connected from %s", connection.peer)
        await client.link.run()

    # -- frames ---------------------------------------------------------------------------

    def _on_node_frame(self, session: NodeSession, envelope: pb.Envelope, attachment: Attachment | None) -> None:
        kind = envelope.WhichOneof("body")
        if kind == "register":
            refusal = self._nodes.check(envelope.register, session.credential)
            if refusal is not None:
                self._quiet.log(logging.WARNING, session.peer, "registration",
                                "Refused the registration of node %s: %s", session.node_id, refusal.message)
                session.link.send(pb.Envelope(reject=refusal))
                session.link.close(f"registration refused: {refusal.message}")
                return
            names = self._nodes.register(session, envelope.register)
            session.link.send(pb.Envelope(registered=pb.Registered(functions=names)))
        elif kind == "goodbye":
            self._nodes.goodbye(session, envelope.goodbye.reason)
        elif kind in ("result", "error", "item", "end"):
            self._call_table.answer(session, envelope, attachment)
        else:
            logger.debug("Ignoring a %s frame from node %s", kind, session.node_id)

    def _on_client_frame(self, client: Peer, envelope: pb.Envelope, attachment: Attachment | None) -> None:
        kind = envelope.WhichOneof("body")
        if kind == "call":
            self._call_table.accept(client, envelope.call, attachment)
        elif kind == "cancel":
            self._call_table.cancel(client, envelope.cancel)
        elif kind == "list_nodes":
            client.link.send(pb.Envelope(node_list=self._nodes.node_list(
                envelope.list_nodes, details=client.credential.sees_details)))
        else:
            logger.debug("Ignoring a %s frame from client %s", kind, client.peer)

    # -- queries --------------------------------------------------------------------------

    def nodes(self) -> dict[str, str]:
        """``{node_id: state}`` of every node the gateway knows."""
        return self._registry.states() if self._registry is not None else {}
