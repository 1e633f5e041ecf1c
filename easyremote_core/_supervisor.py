"""The connection supervisor shared by nodes and clients: connect, run, detect, back off, reconnect."""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence

import anyio
from anyio.abc import TaskGroup

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

#: Spreads retries and checks; its own generator, so the program's ``random`` state is left alone.
_jitter = random.Random()

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
    An attempt with no answer within ``connection_timeout`` counts as failed but
    goes on waiting through the backoff that follows: a gateway that answers
    then (one that hung and woke up) is used at once.
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
        on_link_lost: Callable[[Link, str], None] | None = None,
        plugins: PluginManager | None = None,
    ) -> None:
        self.role = role
        self.address = address
        self.transport = transport
        self.link_options = link_options
        # An attempt may go on waiting through the backoff that follows connection_timeout:
        # the transport must not give up on it first (the supervisor bounds it).
        longest_delay = max(getattr(policy, "cap", 0.0), settings.max_reconnect_interval)
        self._connect_options = dataclasses.replace(
            link_options, connect_timeout=link_options.connect_timeout + longest_delay)
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
        self.reconnect_count = 0  # sessions established after an earlier one ended
        self.reconnect_attempts = 0  # attempts to reconnect ("Attempting to reconnect...")
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
        once: retrying cannot help. The last state change, to ``closed``, carries the
        reason "stopped" when the run was cancelled, else the error that ended it.
        """
        reason = "stopped"
        try:
            failure: Exception | None = None
            async with anyio.create_task_group() as attempts:
                try:
                    await self._supervise(attempts)
                except Exception as exc:  # leaves run() as itself, not wrapped in an ExceptionGroup
                    failure = exc
                attempts.cancel_scope.cancel()  # an attempt still waiting for its answer ends with the run
            if failure is not None:
                raise failure
        except (anyio.get_cancelled_exc_class(), KeyboardInterrupt):
            raise
        except BaseException as exc:
            reason = str(exc) or type(exc).__name__
            raise
        finally:
            self.link = None
            self._set_state(ConnectionState.CLOSED, reason)
            self._ready.set()  # wake waiters: they see CLOSED

    async def _supervise(self, attempts: TaskGroup) -> None:
        failures = 0
        limit = self.settings.max_retry_attempts
        label = self.transport.label or self.transport.name
        timeout = self.settings.connection_timeout
        answered_late: _Attempt | None = None  # an attempt whose answer came during the backoff
        while True:
            self._set_state(ConnectionState.RECONNECTING if self.sessions else ConnectionState.CONNECTING)
            if answered_late is None:
                if failures:
                    self._log.info("Attempting to reconnect...")
                    self.reconnect_attempts += 1
                self._log.info("%s service (attempt %d)", self.role.capitalize(), failures + 1)
                attempt = _Attempt()
                attempts.start_soon(self._run_attempt, attempt, label)
                with anyio.move_on_after(timeout):
                    await attempt.answered.wait()
                deadline = attempt.started + timeout
            else:
                attempt, answered_late = answered_late, None
                # it answered after connection_timeout: registering gets a bound of its own
                deadline = (attempt.answered_at or anyio.current_time()) + timeout
            waiting: _Attempt | None = None  # counted as failed, but it goes on waiting through the backoff
            try:
                if not attempt.answered.is_set():
                    waiting = attempt
                    failures += 1
                    reason = f"no answer from the gateway within connection_timeout ({timeout:g} s)"
                else:
                    connection, welcome = attempt.claim()
                    reason = await self._serve(connection, welcome, deadline)
                    if self._leaving:
                        return
                    failures = 1  # the established link broke: its loss is the first failure
            except _GoAway as notice:
                self._log.warning("Gateway asked to retry after %.1f s: %s", notice.retry_after, notice)
                await anyio.sleep(notice.retry_after)
                continue
            except (AuthenticationError, ProtocolError, ConfigurationError) as exc:
                self.last_error = str(exc)
                self.fatal_error = exc
                self._log.error("Stopped connecting to %s: %s: %s", self.address, type(exc).__name__, exc)
                raise
            except _ORDINARY_FAILURES as exc:
                failures += 1
                reason = _reason(exc)
            self.last_error = reason
            self._log.error("Connection error (attempt %d): %s", failures, reason)
            if limit is not None and failures > limit:
                self.fatal_error = GatewayUnavailableError(
                    f"gave up after {limit} reconnect attempts to {self.address}: {reason}"
                )
                raise self.fatal_error
            delay = self._next_delay(failures)
            if delay is None:
                self.fatal_error = GatewayUnavailableError(
                    f"the retry policy {self.policy.name or type(self.policy).__name__!r} gave up after "
                    f"{failures} failed attempts to {self.address}: {reason}")
                raise self.fatal_error
            self._log.info(
                "Reconnecting in %s seconds... (attempt %d/%s)",
                _seconds(delay), failures, "∞" if limit is None else limit,
            )
            self._set_state(ConnectionState.RECONNECTING, reason)
            answered_late = await self._back_off(delay, waiting)
            if answered_late is not None:
                self._log.info("Gateway %s answered attempt %d at last: using it", self.address, failures)

    async def _run_attempt(self, attempt: _Attempt, label: str) -> None:
        """Connect and shake hands; hold the connection until the supervisor claims it or gives up on it."""
        connection: Connection | None = None
        try:
            with attempt.scope:
                try:
                    try:
                        connection = await self.transport.connect(self.address, self._connect_options)
                    except ProtocolError as exc:
                        # The transport's own handshake went wrong (a port that is not, or not yet,
                        # an EasyRemote gateway): a failed attempt, retried, never the end.
                        raise GatewayUnavailableError(f"{self.address}: {exc}") from exc
                    self._log.info("%s channel to VPS established successfully", label)
                    attempt.welcome = await self._handshake(connection)
                except Exception as exc:  # the supervisor decides what it means
                    attempt.error = exc
                else:
                    attempt.connection = connection
                    attempt.scope.deadline = math.inf  # answered: the supervisor takes it or abandons it
                attempt.answered_at = anyio.current_time()
                attempt.answered.set()
                if attempt.connection is not None:
                    await attempt.claimed.wait()
        finally:
            attempt.answered.set()
            if connection is not None and not attempt.claimed.is_set():
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    if attempt.error is not None:
                        await connection.aclose()  # the gateway answered: close politely
                    else:
                        await connection.drop()  # abandoned: the gateway may never answer

    async def _serve(self, connection: Connection, welcome: pb.Welcome, deadline: float) -> str:
        """Establish the session (by ``deadline``), then serve the link until it ends; return why it ended."""
        self.welcome = welcome
        established = False
        refusal: EasyRemoteError | None = None

        def ended(reason: str) -> None:  # runs the moment the link ends, before its connection closes
            if self.link is link:
                self.link = None
            self.last_received_wall = link.last_received_wall
            if established and not self._leaving:
                if self._on_link_lost is not None:
                    self._on_link_lost(link, reason)
                self._set_state(ConnectionState.RECONNECTING, reason)

        link = Link(
            connection,
            on_frame=self._on_frame,
            heartbeat_interval=self.settings.heartbeat_interval,
            heartbeat_timeout=self.settings.heartbeat_timeout,
            health_check_interval=self.settings.health_check_interval,
            probes=self.probes,
            send_heartbeats=True,
            peer_name=f"gateway {self.address}",
            on_end=ended,
        )
        self.link = link  # frames that arrive while establishing are handled on this link
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
                    with anyio.move_on_after(max(deadline - anyio.current_time(), 0.001)) as timer:
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
                    if self.sessions:
                        self.reconnect_count += 1
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

    def _next_delay(self, failures: int) -> float | None:
        """The policy's delay; a policy that fails or answers nonsense costs one longest wait, not the node.

        The longest wait is ``max_reconnect_interval``.
        """
        longest = self.settings.max_reconnect_interval
        try:
            delay = self.policy.next_delay(failures)
        except Exception:
            self._log.exception("Retry policy %r failed; waiting %g s", self.policy, longest)
            return longest
        if delay is None:
            return None
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay < math.inf:
            self._log.error("Retry policy %r returned %r, not a delay in seconds; waiting %g s",
                            self.policy, delay, longest)
            return longest
        return float(delay)

    async def _back_off(self, delay: float, waiting: _Attempt | None) -> _Attempt | None:
        """Wait ``delay``, or less: until the transport sees the gateway listening again, or until
        ``waiting`` (an attempt still waiting for its answer) gets one to act on, which is returned."""
        answered: _Attempt | None = None
        if waiting is not None:
            waiting.scope.deadline = anyio.current_time() + delay  # it lives no longer than the backoff
        with anyio.move_on_after(delay):
            async with anyio.create_task_group() as tg:
                async def watch_reachable() -> None:
                    await self.transport.wait_reachable(self.address, self.link_options)
                    self._log.info("Gateway %s is reachable again", self.address)
                    await anyio.sleep(_jitter.uniform(0, RETURN_SPREAD))
                    tg.cancel_scope.cancel()

                async def watch_attempt(attempt: _Attempt) -> None:
                    nonlocal answered
                    await attempt.answered.wait()
                    if attempt.worth_acting_on:
                        answered = attempt
                        tg.cancel_scope.cancel()
                    elif attempt.error is not None:  # already counted as a failure
                        self._log.debug("The attempt still waiting failed too: %s", _reason(attempt.error))

                tg.start_soon(watch_reachable)
                if waiting is not None:
                    tg.start_soon(watch_attempt, waiting)
        if waiting is not None and answered is None:
            if waiting.answered.is_set() and waiting.worth_acting_on:  # as the delay ran out
                answered = waiting
            else:
                waiting.scope.cancel()  # its task closes the connection it holds
        return answered


class _Attempt:
    """One connect and handshake, in a task of its own, so that an answer that comes after
    ``connection_timeout``, while the supervisor backs off, can still be used at once."""

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.started = anyio.current_time()
        self.answered = anyio.Event()  # it has a connection or an error, or it was given up on
        self.answered_at: float | None = None
        self.claimed = anyio.Event()
        self.connection: Connection | None = None
        self.welcome: pb.Welcome | None = None
        self.error: Exception | None = None

    @property
    def worth_acting_on(self) -> bool:
        """It got a link, or an answer that is no ordinary failure (come back later, or a fatal error)."""
        return self.connection is not None or (
            self.error is not None and not isinstance(self.error, _ORDINARY_FAILURES)
        )

    def claim(self) -> tuple[Connection, pb.Welcome]:
        """Take over its connection; raises the error it ended with instead."""
        if self.error is not None:
            raise self.error
        assert self.connection is not None and self.welcome is not None, "the attempt has not answered"
        self.claimed.set()
        return self.connection, self.welcome


#: Failures that count towards ``max_retry_attempts``; any other error ends the run.
_ORDINARY_FAILURES = (GatewayUnavailableError, ConnectionLostError, TimeoutError, OSError)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not isinstance(exc, EasyRemoteError):
        return "timed out connecting and registering"
    return str(exc) or type(exc).__name__


def _seconds(delay: float) -> str:
    text = f"{delay:.1f}"
    return text[:-2] if text.endswith(".0") else text
