"""The connection supervisor shared by nodes and clients: connect, run, detect, back off, reconnect."""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Awaitable, Callable, Sequence

import anyio

from ._address import Address
from ._config import LinkSettings
from ._errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionLostError,
    EasyRemoteError,
    GatewayUnavailableError,
    ProtocolError,
)
from ._link import FrameHandler, Link
from ._plugins import PluginManager
from ._probes import HealthProbe
from ._protocol import PROTOCOL_VERSION, decode, encode, pb
from ._retry import RetryPolicy
from ._transport import Connection, LinkOptions, Transport

logger = logging.getLogger("easyremote")

#: After the gateway is seen listening again, wait up to this long (uniformly) before the
#: attempt, so that many peers that noticed together do not arrive in lock-step.
RETURN_SPREAD = 0.25


class ConnectionState(str, enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    READY = "ready"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"

    def __str__(self) -> str:
        return self.value


StateCallback = Callable[[ConnectionState, ConnectionState, str], None]


class _GoAway(Exception):
    def __init__(self, retry_after: float, reason: str) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class ConnectionSupervisor:
    """Keeps one peer connected to the gateway, per its retry policy and health probes.

    ``establish`` runs on every new link before it counts as ready (a node
    registers its functions there); the backoff resets only after it succeeds.
    """

    def __init__(
        self,
        *,
        role: str,
        address: Address,
        transport: Transport,
        link_options: LinkOptions,
        settings: LinkSettings,
        policy: RetryPolicy,
        probes: Sequence[HealthProbe],
        hello: Callable[[], pb.Hello],
        on_frame: FrameHandler,
        establish: Callable[[Link], Awaitable[None]] | None = None,
        on_link_lost: Callable[[str], None] | None = None,
        plugins: PluginManager | None = None,
    ) -> None:
        self.role = role
        self.address = address
        self.transport = transport
        self.link_options = link_options
        self.settings = settings
        self.policy = policy
        self.probes = list(probes)
        self._hello = hello
        self._on_frame = on_frame
        self._establish = establish
        self._on_link_lost = on_link_lost
        self._plugins = plugins
        self._log = logging.getLogger(f"easyremote.{role}")
        self._callbacks: list[StateCallback] = []
        self.state = ConnectionState.IDLE
        self.link: Link | None = None
        self.welcome: pb.Welcome | None = None
        self.reconnect_count = 0
        self.sessions = 0
        self.last_error = ""
        self.fatal_error: EasyRemoteError | None = None  # why run() stopped for good
        self.connected_at: float | None = None
        self.last_received_wall: float | None = None
        self._ready = anyio.Event()
        self._leaving = False

    def leave(self) -> None:
        """The peer is stopping in order: the end of its current link is no loss, and ``run`` returns."""
        self._leaving = True

    # -- observing ------------------------------------------------------------------------

    def on_state_change(self, callback: StateCallback) -> None:
        """Call ``callback(old, new, reason)`` on every state change (from the event loop)."""
        self._callbacks.append(callback)

    def _set_state(self, new: ConnectionState, reason: str = "") -> None:
        old = self.state
        if new is old:
            return
        self.state = new
        if new is ConnectionState.READY:
            self._ready.set()
        elif self._ready.is_set():
            self._ready = anyio.Event()
        for callback in list(self._callbacks):
            try:
                callback(old, new, reason)
            except Exception:
                logger.exception("state-change callback %r raised", callback)
        if self._plugins is not None:
            self._plugins.notify(
                "easyremote_connection_state_changed",
                role=self.role, peer=str(self.address), old_state=old.value, new_state=new.value, reason=reason,
            )

    async def wait_ready(self) -> Link:
        """Wait until a link is ready; raises ``GatewayUnavailableError`` once closed."""
        while True:
            if self.state is ConnectionState.CLOSED:
                if self.fatal_error is not None:
                    raise self.fatal_error
                raise GatewayUnavailableError(self.last_error or "the connection is closed")
            link = self.link
            if self.state is ConnectionState.READY and link is not None:
                return link
            await self._ready.wait()

    @property
    def healthy(self) -> bool:
        return self.state is ConnectionState.READY

    # -- running --------------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected until cancelled; raise ``GatewayUnavailableError`` when retries run out.

        ``AuthenticationError`` and ``ProtocolError`` from the gateway end the run at
        once: retrying cannot help.
        """
        failures = 0
        limit = self.settings.max_retry_attempts
        label = self.transport.label or self.transport.name
        try:
            while True:
                self._set_state(ConnectionState.CONNECTING if self.sessions == 0 else ConnectionState.RECONNECTING)
                if failures:
                    self._log.info("Attempting to reconnect...")
                    self.reconnect_count += 1
                self._log.info("%s service (attempt %d)", self.role.capitalize(), failures + 1)
                try:
                    reason = await self._attempt(label)
                except _GoAway as notice:
                    self._log.warning("Gateway asked to retry after %.1f s: %s", notice.retry_after, notice)
                    await anyio.sleep(notice.retry_after)
                    continue
                except (AuthenticationError, ProtocolError, ConfigurationError) as exc:
                    self.last_error = str(exc)
                    self.fatal_error = exc
                    self._log.error("Stopped connecting to %s: %s: %s", self.address, type(exc).__name__, exc)
                    raise
                except (GatewayUnavailableError, ConnectionLostError, TimeoutError, OSError) as exc:
                    failures += 1
                    reason = _reason(exc)
                else:
                    if self._leaving:
                        return
                    failures = 1  # the established link broke: its loss is the first failure
                self.last_error = reason
                self._log.error("Connection error (attempt %d): %s", failures, reason)
                if limit is not None and failures > limit:
                    self.fatal_error = GatewayUnavailableError(
                        f"gave up after {limit} reconnect attempts to {self.address}: {reason}"
                    )
                    raise self.fatal_error
                delay = self.policy.next_delay(failures)
                self._log.info(
                    "Reconnecting in %s seconds... (attempt %d/%s)",
                    _seconds(delay), failures, "∞" if limit is None else limit,
                )
                self._set_state(ConnectionState.RECONNECTING, reason)
                await self._back_off(delay)
        finally:
            self.link = None
            self._set_state(ConnectionState.CLOSED,
                            str(self.fatal_error) if self.fatal_error is not None else "stopped")
            self._ready.set()  # wake waiters: they see CLOSED

    async def _attempt(self, label: str) -> str:
        """One connect + handshake + establish; then serve the link until it ends. Returns why it ended."""
        with anyio.fail_after(self.settings.connection_timeout) as deadline:
            connection = await self.transport.connect(self.address, self.link_options)
            try:
                self._log.info("%s channel to VPS established successfully", label)
                self.welcome = await self._handshake(connection)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await connection.aclose()
                raise
        link = Link(
            connection,
            on_frame=self._on_frame,
            heartbeat_interval=self.settings.heartbeat_interval,
            heartbeat_timeout=self.settings.heartbeat_timeout,
            health_check_interval=self.settings.health_check_interval,
            probes=self.probes,
            send_heartbeats=True,
            peer_name=f"gateway {self.address}",
        )
        established = False
        refusal: EasyRemoteError | None = None
        self.link = link  # frames that arrive while establishing are handled on this link

        def ended(reason: str) -> None:  # runs the moment the link ends, before its connection closes
            if self.link is link:
                self.link = None
            self.last_received_wall = link.last_received_wall
            if established and not self._leaving:
                if self._on_link_lost is not None:
                    self._on_link_lost(reason)
                self._set_state(ConnectionState.RECONNECTING, reason)

        link.on_end = ended
        try:
            async with anyio.create_task_group() as tg:
                async def serve_link() -> None:
                    await link.run()
                    tg.cancel_scope.cancel()

                tg.start_soon(serve_link)
                registered = True
                if self._establish is not None:
                    # Raising here would reach the caller wrapped in an ExceptionGroup: end the link
                    # instead, and raise a refusal once the task group is closed.
                    with anyio.move_on_after(max(deadline.deadline - anyio.current_time(), 0.001)) as timer:
                        try:
                            await self._establish(link)
                        except (AuthenticationError, ProtocolError, ConfigurationError) as exc:
                            refusal = exc
                            registered = False
                            link.close(str(exc))
                    if timer.cancelled_caught:
                        registered = False
                        link.close("timed out registering with the gateway")
                if registered and not link.ended.is_set():
                    established = True
                    self.sessions += 1
                    self.connected_at = anyio.current_time()
                    self.policy.reset()
                    self._set_state(ConnectionState.READY)
        finally:
            if self.link is link:
                self.link = None
        if refusal is not None:
            raise refusal
        if not established:
            raise ConnectionLostError(link.end_reason or "the link ended before the gateway accepted it")
        return link.end_reason or "connection closed"

    async def _handshake(self, connection: Connection) -> pb.Welcome:
        hello = self._hello()
        hello.protocol_version = PROTOCOL_VERSION
        await connection.send(encode(pb.Envelope(hello=hello)))
        try:
            reply = decode(await connection.receive())
        except anyio.EndOfStream:
            raise ConnectionLostError("gateway closed the connection during the handshake") from None
        kind = reply.WhichOneof("body")
        if kind == "welcome":
            if reply.welcome.protocol_version != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"gateway speaks protocol version {reply.welcome.protocol_version}, "
                    f"this {self.role} speaks {PROTOCOL_VERSION}"
                )
            return reply.welcome
        if kind == "reject":
            reject = reply.reject
            if reject.reason == pb.Reject.REASON_AUTH:
                raise AuthenticationError(reject.message)
            raise ProtocolError(reject.message)
        if kind == "go_away":
            raise _GoAway(reply.go_away.retry_after_ms / 1000, reply.go_away.reason or "gateway is busy")
        raise ProtocolError(f"gateway answered the handshake with {kind!r}")

    async def _back_off(self, delay: float) -> None:
        """Wait ``delay``, or less if the transport sees the gateway listening again."""
        with anyio.move_on_after(delay):
            await self.transport.wait_reachable(self.address, self.link_options)
            self._log.info("Gateway %s is reachable again", self.address)
            await anyio.sleep(random.uniform(0, RETURN_SPREAD))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not isinstance(exc, EasyRemoteError):
        return "timed out connecting and registering"
    return str(exc) or type(exc).__name__


def _seconds(delay: float) -> str:
    text = f"{delay:.1f}"
    return text[:-2] if text.endswith(".0") else text
