"""The compute node: registers functions with the gateway and runs the calls it routes."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import secrets
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import sniffio

from ._address import Address, parse_addresses
from ._backend import TaskSet
from ._config import LinkSettings, number, whole
from ._errors import AuthenticationError, ConfigurationError, EasyRemoteError, ProtocolError
from ._gateways import GatewaySet, LinkPlan
from ._kept import KeptAnswers
from ._link import Link
from ._logs import console_logging
from ._plugins import PluginManager, get_plugin_manager
from ._probes import HealthProbe
from ._protocol import (
    Attachment,
    ErrorCode,
    dump_value,
    error_frame,
    exception_frame,
    load_arguments,
    payload_of,
    pb,
    split_payload,
)
from ._retry import RetryPolicy
from ._serving import BaseExceptionGroup, in_main_thread, one_exception, run_blocking
from ._supervisor import ConnectionState, ConnectionSupervisor, StateCallback
from ._transport import DEFAULT_MAX_MESSAGE_SIZE, TLSConfig, Transport
from ._workers import WorkerPool

logger = logging.getLogger("easyremote.node")

F = TypeVar("F", bound=Callable[..., Any])
TOKEN_ENV = "EASYREMOTE_TOKEN"
#: Room left in a frame for the envelope around a payload.
ENVELOPE_OVERHEAD = 4096
#: After its goodbye, how long a stopping node waits for the gateway to close the link.
GOODBYE_TIMEOUT = 2.0


@dataclass(frozen=True)
class RegisteredFunction:
    name: str
    func: Callable[..., Any]
    kind: str  # "sync", "async", "generator" or "async-generator"
    timeout: float | None
    idempotent: bool

    @property
    def streaming(self) -> bool:
        return self.kind in ("generator", "async-generator")


@dataclass(frozen=True)
class NodeStatus:
    """A snapshot of a node, as ``node.status()`` returns it."""

    node_id: str
    state: str
    connection_healthy: bool
    reconnect_count: int  # reconnections that succeeded: sessions established after an earlier one ended
    reconnect_attempts: int  # attempts to reconnect, each "Attempting to reconnect..."
    last_heartbeat_time: float | None
    active_executions: int
    registered_functions: tuple[str, ...]
    last_error: str
    gateway: str  # the gateway addresses, separated by commas
    #: Each gateway's address and the state of the link to it.
    gateways: dict[str, str] = field(default_factory=dict)


@dataclass
class _Execution:
    """One call running. On asyncio it runs as the loop's own task, cancelled with ``task.cancel()``
    and timed out by a timer of the loop's; elsewhere in a cancel scope with the deadline."""

    function: str
    started: float
    link: Link | None  # where its answers go; None while the link it came on is lost and nobody asked again
    owner: bytes = b""  # whose call it is (CallRequest.owner): only they may ask for it again
    kept: bool = False  # it must not run twice: its answer is kept for result_retention
    deadline: float | None = None  # when its caller stops waiting (the loop's clock)
    answered: bool = False  # its last answer was given (and kept, when it is kept)
    #: Another link the call was sent on while ``link`` still looked alive: its answers go there
    #: if ``link`` turns out lost (the node may notice a dead gateway after the call is asked again).
    fallback: Link | None = None
    abandon: anyio.CancelScope | None = None  # while its link is lost: the wait for its caller's deadline
    scope: anyio.CancelScope | None = None  # not asyncio: its deadline is the call's timeout
    task: asyncio.Task[Any] | None = None  # asyncio: the task running the call, once it started
    cancelled: bool = False  # by the gateway's Cancel, a lost link or the drain, not by the timeout
    timed_out: bool = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()
        elif self.scope is not None:
            self.scope.cancel()

    def time_out(self) -> None:
        self.timed_out = True
        if self.task is not None and not self.cancelled:
            self.task.cancel()


class _GatewayLink:
    """The node's side of its link to one gateway: registering on each new link."""

    def __init__(self, node: ComputeNode) -> None:
        self.node = node
        self.supervisor: ConnectionSupervisor | None = None
        self.registered: anyio.Event | None = None
        self.refusal: pb.Reject | None = None  # why the gateway refused the last registration

    @property
    def link(self) -> Link | None:
        return self.supervisor.link if self.supervisor is not None else None

    async def establish(self, link: Link) -> None:
        self.registered = anyio.Event()
        self.refusal = None
        link.send(self.node._register_frame())
        await self.registered.wait()
        if self.refusal is not None:
            error = AuthenticationError if self.refusal.reason == pb.Reject.REASON_AUTH else ProtocolError
            raise error(f"the gateway refused the registration of node {self.node.node_id}: "
                        f"{self.refusal.message or 'no reason given'}")
        logger.info("Registered to VPS successfully")

    def on_frame(self, envelope: pb.Envelope, attachment: Attachment | None) -> None:
        self.node._on_frame(self, envelope, attachment)

    def answered(self, reject: pb.Reject | None) -> None:
        if reject is not None:
            self.refusal = reject
        if self.registered is not None:
            self.registered.set()


class ComputeNode:
    """Connects out to its gateways, registers functions, and runs the calls routed to it.

    ``vps_address`` names one gateway or several (a list, or addresses separated by
    commas; a host name that resolves to several addresses is several gateways): the node
    keeps a link to each and registers on each. It reconnects by itself (per its retry
    policy) whenever a link is lost, and registers its functions again each time.
    """

    def __init__(
        self,
        vps_address: str,
        node_id: str | None = None,
        *,
        reconnect_interval: float = 2.0,
        max_reconnect_interval: float = 60.0,
        max_retry_attempts: int | None = None,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 15.0,
        health_check_interval: float = 30.0,
        connection_timeout: float = 10.0,
        execution_timeout: float = 300.0,
        drain_timeout: float = 10.0,
        max_queue_size: int = 1000,
        max_concurrency: int | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        result_retention: float = 300.0,
        max_retained_bytes: int = 256 * 1024 * 1024,
        transport: str | Transport | None = None,
        retry_policy: str | RetryPolicy | None = None,
        health_probes: Iterable[str | HealthProbe] | None = None,
        auth_token: str | None = None,
        tls: TLSConfig | None = None,
        plugins: PluginManager | None = None,
    ) -> None:
        self.addresses = parse_addresses(vps_address, parameter="vps_address")
        self.address = self.addresses[0]
        if node_id is not None and (not isinstance(node_id, str) or not node_id.strip() or len(node_id) > 200):
            raise ConfigurationError(f"node_id must be a non-empty string of at most 200 characters, got {node_id!r}")
        self.node_id = node_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.settings = LinkSettings(
            reconnect_interval=reconnect_interval, max_reconnect_interval=max_reconnect_interval,
            max_retry_attempts=max_retry_attempts, heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout, health_check_interval=health_check_interval,
            connection_timeout=connection_timeout,
        )
        self.execution_timeout = number("execution_timeout", execution_timeout, above=0)
        self.drain_timeout = number("drain_timeout", drain_timeout, minimum=0)
        self.max_queue_size = whole("max_queue_size", max_queue_size, minimum=1)
        self.max_concurrency = whole("max_concurrency", max_concurrency or os.cpu_count() or 1, minimum=1)
        self.max_message_size = whole("max_message_size", max_message_size, minimum=ENVELOPE_OVERHEAD * 2)
        self.result_retention = number("result_retention", result_retention, minimum=0)
        self.max_retained_bytes = whole("max_retained_bytes", max_retained_bytes, minimum=0)
        self.auth_token = auth_token if auth_token is not None else os.environ.get(TOKEN_ENV)
        self._plugins = plugins or get_plugin_manager()
        self._plan = LinkPlan(self._plugins, self.addresses, self.settings, transport=transport,
                              retry_policy=retry_policy, health_probes=health_probes, tls=tls,
                              max_message_size=self.max_message_size)
        self._functions: dict[str, RegisteredFunction] = {}
        self._incarnation = b""  # new each run(): calls kept by one run are unknown to the next
        self._kept = KeptAnswers(self.result_retention, self.max_retained_bytes, time.monotonic)
        self._expiry: asyncio.TimerHandle | None = None  # drops kept answers as their time runs out
        self._tasks = TaskSet(self._task_failed)  # the calls: they outlive a lost link, not the node
        self._state_callbacks: list[StateCallback] = []
        self._supervisor: GatewaySet | None = None
        self._run_scope: anyio.CancelScope | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._stop_requested = False
        self._stopping: anyio.Event | None = None  # set by stop(): drain, say goodbye, end
        self._draining = False
        self._idle: anyio.Event | None = None  # set when the last running call ends while draining
        self._busy_threads: set[str] = set()  # call ids whose sync code runs in a worker thread now
        self._workers = WorkerPool(1, "easyremote-node")  # made anew, max_concurrency threads, by each run()
        self._last_error = ""
        # Diagnostics the reconnection guide shows (kept in step with the supervisor).
        self._active_executions: dict[str, _Execution] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop, when it is asyncio's (set by run)

    # -- registering ----------------------------------------------------------------------

    @overload
    def register(self, func: F) -> F: ...
    @overload
    def register(self, *, name: str | None = None, timeout: float | None = None,
                 idempotent: bool = False) -> Callable[[F], F]: ...

    def register(self, func: Any = None, *, name: str | None = None, timeout: float | None = None,
                 idempotent: bool = False) -> Any:
        """Register a function, bare (``@node.register``) or with options."""
        if timeout is not None:
            number("timeout", timeout, above=0)

        def decorate(fn: F) -> F:
            if not callable(fn):
                raise ConfigurationError(f"register() needs a callable, got {fn!r}")
            entry = RegisteredFunction(name=name or fn.__name__, func=fn, kind=_kind(fn), timeout=timeout,
                                       idempotent=bool(idempotent))
            self._functions[entry.name] = entry
            if self._supervisor is not None:  # already connected: tell the gateways
                if _off_loop(self._token):
                    anyio.from_thread.run_sync(self._register_again, token=self._token)
                else:
                    self._register_again()
            return fn

        return decorate(func) if func is not None else decorate

    def _register_again(self) -> None:
        if self._supervisor is not None:
            for link in self._supervisor.ready_links:
                link.send(self._register_frame())

    @property
    def functions(self) -> dict[str, RegisteredFunction]:
        return dict(self._functions)

    def _register_frame(self) -> pb.Envelope:
        specs = [pb.FunctionSpec(name=f.name, streaming=f.streaming, idempotent=f.idempotent, timeout=f.timeout or 0)
                 for f in self._functions.values()]
        return pb.Envelope(register=pb.Register(functions=specs, max_queue_size=self.max_queue_size,
                                                max_concurrency=self.max_concurrency))

    # -- running --------------------------------------------------------------------------

    def serve(self) -> None:
        """Serve, reconnecting per the retry policy, until Ctrl+C, SIGTERM or ``stop()``.

        The first Ctrl+C (or SIGTERM) stops in order: no new calls, running ones finish
        (up to ``drain_timeout``), goodbye to the gateway. A second one stops at once.
        It runs an event loop of its own in the calling thread, so it works in any thread
        (Ctrl+C and SIGTERM are handled in the main thread only; elsewhere ``stop()`` ends
        it). Raises ``GatewayUnavailableError`` when ``max_retry_attempts`` run out; any
        failure comes out as one exception, never an exception group.
        """
        with console_logging():
            forced = run_blocking(self._serve_with_signals, f"node {self.node_id}")
            if forced and self._busy_threads:
                # Worker threads cannot be interrupted and would hold the interpreter open.
                logger.warning("Node %s exits now, abandoning %d call(s) still running in worker threads",
                               self.node_id, len(self._busy_threads))
                logging.shutdown()
                os._exit(130)

    async def _serve_with_signals(self) -> bool:
        """Run until stopped; True when a second signal asked to stop at once."""
        forced = False
        if not in_main_thread():  # signal handlers can be installed only in the main thread
            await self.run()
            return forced
        async with anyio.create_task_group() as tg:
            async def on_signal() -> None:
                nonlocal forced
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if not self._stop_requested:
                            logger.info("Received %s, stopping node %s", name, self.node_id)
                            self.stop()
                        else:
                            logger.info("Received %s again, stopping node %s at once", name, self.node_id)
                            forced = True
                            if self._run_scope is not None:
                                self._run_scope.cancel()
                            return

            tg.start_soon(on_signal)
            failure: BaseException | None = None
            try:
                await self.run()
            except EasyRemoteError as exc:  # re-raised below, not wrapped in an ExceptionGroup
                failure = exc
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return forced

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``stop()`` or cancellation (the async form of ``serve``)."""
        if self._supervisor is not None:
            raise RuntimeError(f"node {self.node_id} is already running")
        self._token = anyio.lowlevel.current_token()
        self._stopping = anyio.Event()
        self._draining = False
        self._incarnation = secrets.token_bytes(8)
        self._kept.clear()
        stopping = self._stopping
        supervisor = GatewaySet([self._supervise(address, first=n == 0)
                                 for n, address in enumerate(await self._plan.gateways())],
                                make=functools.partial(self._supervise, first=False), names=self.addresses,
                                refresh=self.settings.health_check_interval)
        for callback in self._state_callbacks:
            supervisor.on_state_change(callback)
        self._supervisor = supervisor
        self._loop = asyncio.get_running_loop() if sniffio.current_async_library() == "asyncio" else None
        self._workers = WorkerPool(self.max_concurrency, f"easyremote-node-{self.node_id[:40]}")
        task_status.started()
        failure: EasyRemoteError | None = None

        async def serve_links() -> None:
            async with anyio.create_task_group() as tg:
                async def supervise() -> None:
                    nonlocal failure
                    try:
                        await supervisor.run()
                    except EasyRemoteError as exc:  # raised below, not wrapped in an ExceptionGroup
                        failure = exc
                    tg.cancel_scope.cancel()

                tg.start_soon(supervise)
                await stopping.wait()
                await self._leave(supervisor)
                tg.cancel_scope.cancel()

        try:
            with anyio.CancelScope() as self._run_scope:
                if self._stop_requested:
                    return
                await self._tasks.own(serve_links)  # the calls still running end with the node
            if failure is not None:
                raise failure
        finally:
            await self._plan.aclose()
            self._workers.close()
            self._kept.clear()
            if self._expiry is not None:
                self._expiry.cancel()
                self._expiry = None
            self._last_error = supervisor.last_error
            self._supervisor = None
            self._finished = supervisor
            self._run_scope = None
            self._token = None
            logger.info("Node %s stopped", self.node_id)

    def _supervise(self, address: Address, *, first: bool) -> ConnectionSupervisor:
        gateway = _GatewayLink(self)
        gateway.supervisor = self._plan.supervisor(
            address, first=first, role="node", hello=self._hello, on_frame=gateway.on_frame,
            establish=gateway.establish, on_link_lost=self._on_link_lost)
        return gateway.supervisor

    def stop(self) -> None:
        """Stop serving in order; callable from any thread.

        The node takes no new call, lets the running ones finish (up to ``drain_timeout``
        seconds), says goodbye to the gateway and ends ``run()``/``serve()``.
        """
        self._stop_requested = True
        token, stopping = self._token, self._stopping
        if token is None or stopping is None:
            return
        if _off_loop(token):
            try:
                anyio.from_thread.run_sync(stopping.set, token=token)
            except RuntimeError:
                pass  # the loop has already finished
        else:
            stopping.set()

    async def _leave(self, gateways: GatewaySet) -> None:
        """Take no new calls, wait for the running ones, then let the gateways close the links."""
        self._draining = True
        links = []
        for supervisor in gateways.supervisors:
            link = supervisor.link if supervisor.state is ConnectionState.READY else None
            if link is not None:
                supervisor.leave()
                link.send(pb.Envelope(goodbye=pb.Goodbye(reason="stopped")))
                links.append(link)
        running = len(self._active_executions)
        if running:
            self._idle = anyio.Event()
            logger.info("Stopping node %s: waiting for %d running call(s) to finish (up to %s s; "
                        "Ctrl+C again stops at once)", self.node_id, running, _g(self.drain_timeout))
            with anyio.move_on_after(self.drain_timeout):
                await self._idle.wait()
            if self._active_executions:
                logger.warning("Node %s: %d call(s) still running after drain_timeout (%s s); cancelling them",
                               self.node_id, len(self._active_executions), _g(self.drain_timeout))
                for execution in list(self._active_executions.values()):
                    execution.cancel()
        # Each gateway closes its link once it has every answer: then nothing is in flight.
        with anyio.move_on_after(GOODBYE_TIMEOUT):
            for link in links:
                await link.ended.wait()

    async def __aenter__(self) -> ComputeNode:
        self._background = anyio.create_task_group()
        await self._background.__aenter__()
        await self._background.start(self.run)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.stop()
        try:
            await self._background.__aexit__(*exc_info)
        except BaseExceptionGroup as group:  # the node's own failure (e.g. refused), not its task group
            failure = one_exception(group, f"node {self.node_id}")
            failure.__suppress_context__ = True
            raise failure  # noqa: B904

    async def wait_ready(self) -> None:
        """Wait until the node is registered with the gateway (``GatewayUnavailableError`` if it stops)."""
        if self._supervisor is None:
            raise RuntimeError(f"node {self.node_id} is not running")
        await self._supervisor.wait_ready()

    def on_state_change(self, callback: StateCallback) -> None:
        """Call ``callback(old_state, new_state, reason)`` on every connection state change."""
        self._state_callbacks.append(callback)
        if self._supervisor is not None:
            self._supervisor.on_state_change(callback)

    # -- the link -------------------------------------------------------------------------

    def _hello(self) -> pb.Hello:
        return pb.Hello(role=pb.ROLE_NODE, node_id=self.node_id, token=self.auth_token or "",
                        incarnation=self._incarnation,
                        heartbeat_interval=self.settings.heartbeat_interval,
                        heartbeat_timeout=self.settings.heartbeat_timeout, software="easyremote")

    @property
    def _execution_tasks(self) -> dict[str, object]:
        """What runs each active call (its task, or its cancel scope off asyncio): the guide's diagnostics."""
        return {call_id: execution.task or execution.scope for call_id, execution in self._active_executions.items()}

    def _task_failed(self, exc: BaseException) -> None:
        logger.error("A call's task of node %s failed: %s: %s", self.node_id, type(exc).__name__, exc,
                     exc_info=exc)

    def _on_link_lost(self, link: Link, reason: str) -> None:
        """Calls that came on ``link`` go on where they can be asked for again; streams end."""
        self._last_error = reason
        for call_id, execution in list(self._active_executions.items()):
            if execution.fallback is link:
                execution.fallback = None
            if execution.link is not link:
                continue
            fallback, execution.fallback = execution.fallback, None
            if fallback is not None and not fallback.ended.is_set():
                execution.link = fallback  # asked again through a gateway that is still there
                continue
            execution.link = None
            if self._functions.get(execution.function, _STREAMING).streaming:
                execution.cancel()
                logger.info("Cancelled %s (call %s): the link to the gateway was lost", execution.function, call_id)
            elif execution.deadline is not None:
                # The caller may ask again, through any gateway, until it stops waiting.
                self._tasks.start_soon(self._abandon_later, call_id, execution)

    async def _abandon_later(self, call_id: str, execution: _Execution) -> None:
        assert execution.deadline is not None
        if self._active_executions.get(call_id) is not execution:
            return  # it ended before this task began
        if execution.abandon is not None:
            execution.abandon.cancel()
        with anyio.CancelScope() as execution.abandon:  # cancelled when the call ends
            await anyio.sleep(max(execution.deadline - anyio.current_time(), 0))
        if execution.abandon.cancel_called:
            return
        if execution.link is None and self._active_executions.get(call_id) is execution:
            execution.cancel()
            logger.info("Cancelled %s (call %s): its caller did not ask for it again before its timeout",
                        execution.function, call_id)

    def _on_frame(self, gateway: _GatewayLink, envelope: pb.Envelope, attachment: Attachment | None) -> None:
        kind = envelope.WhichOneof("body")
        link = gateway.link
        if kind == "call":
            if link is not None:
                self._accept(link, envelope.call, attachment)
        elif kind == "cancel":
            execution = self._active_executions.get(envelope.cancel.call_id)
            # From where the call's answers go, or, for a call whose link was lost, from any gateway
            # (the one it came through has told its caller it was lost); never from one it has left.
            if execution is not None and execution.link in (link, None):
                execution.cancel()
        elif kind in ("registered", "reject"):
            gateway.answered(envelope.reject if kind == "reject" else None)
        elif kind == "go_away":
            if link is not None:
                link.close(f"gateway asked to reconnect later: {envelope.go_away.reason}")
        else:
            logger.debug("Ignoring a %s frame from the gateway", kind)

    def _accept(self, link: Link, request: pb.CallRequest, attachment: Attachment | None = None) -> None:
        call_id = request.call_id
        known = self._active_executions.get(call_id)
        if known is not None:
            self._attach(link, request, known)
            return
        if self._kept and not request.after_asking:
            kept = self._kept.get(call_id)
            if kept is not None:
                if kept.owner != request.owner:
                    link.send(error_frame(call_id, ErrorCode.CODE_FORBIDDEN,
                                          f"call {call_id[:64]} belongs to another caller", node_id=self.node_id))
                else:
                    link.send(kept.envelope, kept.attachment)  # it ran: its answer, again
                return
        if request.only_if_known and request.incarnation == self._incarnation and not self._kept.forgot_recently():
            # Asked about after its gateway was lost: it may run elsewhere now, so a late copy of it
            # (from a gateway that froze with it) must not run here. Kept as its answer.
            self._kept.keep(call_id, request.owner, error_frame(
                call_id, ErrorCode.CODE_CANCELLED, f"call {call_id} of {request.function!r} was asked for again "
                "through another gateway and runs there; this late copy did not run", node_id=self.node_id), None)
            link.send(error_frame(call_id, ErrorCode.CODE_UNKNOWN_CALL, f"node {self.node_id} never received "
                                  f"call {call_id}", node_id=self.node_id))
            return
        if request.resume and (request.incarnation != self._incarnation or self._kept.forgot_recently()
                               or self.result_retention <= 0):
            why = (f"node {self.node_id} has restarted since" if request.incarnation != self._incarnation else
                   f"node {self.node_id} keeps no answers (result_retention=0), so it cannot tell whether it "
                   "finished it" if self.result_retention <= 0 else
                   f"node {self.node_id} kept more answers than max_retained_bytes and dropped some")
            link.send(error_frame(call_id, ErrorCode.CODE_NODE_LOST,
                                  f"call {call_id} of {request.function!r} may or may not have run: {why}",
                                  node_id=self.node_id))
            return
        entry = self._functions.get(request.function)
        if entry is None:
            link.send(error_frame(request.call_id, ErrorCode.CODE_NO_NODE,
                                  f"node {self.node_id} does not serve {request.function!r}", node_id=self.node_id))
            return
        if self._draining:
            link.send(error_frame(request.call_id, ErrorCode.CODE_STOPPING,
                                  f"node {self.node_id} is stopping and took no new call", node_id=self.node_id))
            return
        if entry.streaming and not request.streaming:
            link.send(error_frame(request.call_id, ErrorCode.CODE_STREAMING,
                                  f"{entry.name} is a generator function: iterate over "
                                  f"stream({entry.name!r}, ...) instead of calling execute()",
                                  node_id=self.node_id))
            return
        if len(self._active_executions) >= self.max_queue_size:
            link.send(error_frame(request.call_id, ErrorCode.CODE_NODE_BUSY,
                                  f"node {self.node_id} has {self.max_queue_size} calls queued or running "
                                  "(max_queue_size)", node_id=self.node_id))
            return
        execution = _Execution(function=entry.name, started=time.time(), link=link, owner=request.owner,
                               kept=not entry.idempotent and not entry.streaming,
                               deadline=anyio.current_time() + request.timeout if request.timeout > 0 else None,
                               scope=None if self._loop is not None else anyio.CancelScope())
        self._active_executions[request.call_id] = execution
        self._tasks.start_soon(self._execute, entry, request, payload_of(request, attachment), execution)

    def _attach(self, link: Link, request: pb.CallRequest, execution: _Execution) -> None:
        """A call that is running here was sent again: its answers go to ``link`` from now on
        if its caller asked for it again, or if the link it came on is lost."""
        if execution.owner != request.owner:
            link.send(error_frame(request.call_id, ErrorCode.CODE_FORBIDDEN,
                                  f"call {request.call_id[:64]} belongs to another caller", node_id=self.node_id))
            return
        current = execution.link
        if current is link:
            return  # the same call again
        if current is not None and not current.ended.is_set() and not request.resume:
            execution.fallback = link  # it runs once; its answers go there if `current` is lost
            return
        if self._functions.get(execution.function, _STREAMING).streaming:
            return  # a stream goes on only where it started
        execution.link = link
        logger.info("Call %s of %s, still running, answers through another link now", request.call_id,
                    execution.function)

    def _answer(self, call_id: str, execution: _Execution, envelope: pb.Envelope,
                attachment: Attachment | None = None) -> None:
        """A call's last answer: kept if it must not run twice, and sent where the call's answers go now."""
        execution.answered = True
        if execution.kept and self.result_retention > 0:
            self._kept.keep(call_id, execution.owner, envelope, attachment)
            if self._expiry is None and self._loop is not None:
                self._expire_kept()
        link = execution.link
        if link is not None:
            link.send(envelope, attachment)

    def _expire_kept(self) -> None:
        """Drop the kept answers whose time is up, and set a timer of the loop's for the oldest of the
        rest. (Off asyncio they go as later ones are kept or looked up.)"""
        until = self._kept.trim()
        self._expiry = None
        if until is not None and self._loop is not None:
            self._expiry = self._loop.call_later(max(until - time.monotonic(), 0.0), self._expire_kept)

    async def _execute(self, entry: RegisteredFunction, request: pb.CallRequest, payload: Attachment,
                       execution: _Execution) -> None:
        call_id = request.call_id
        timeout = entry.timeout or self.execution_timeout
        loop = self._loop
        try:
            if execution.cancelled:  # before it started
                return
            if loop is None:
                scope = execution.scope  # cancelled by a Cancel, a lost link or the drain; ends at the timeout
                assert scope is not None
                scope.deadline = anyio.current_time() + timeout
                with scope:
                    await self._run_call(execution, entry, request, payload)
                timed_out = scope.cancelled_caught and not execution.cancelled
            else:
                # The loop's own task and timer: an anyio cancel scope with a deadline costs a
                # call several times as much (it looks up the task and the loop at each step).
                task = execution.task = asyncio.current_task()
                assert task is not None
                timer = loop.call_at(loop.time() + timeout, execution.time_out)
                try:
                    await self._run_call(execution, entry, request, payload)
                except asyncio.CancelledError:
                    if not (execution.cancelled or execution.timed_out):
                        raise  # the link's tasks are ending
                    task.uncancel()
                finally:
                    timer.cancel()
                timed_out = execution.timed_out and not execution.cancelled
            if timed_out:
                self._answer(call_id, execution, error_frame(
                    call_id, ErrorCode.CODE_TIMEOUT, f"{entry.name} did not finish within {timeout:g} s and was "
                    "cancelled", node_id=self.node_id))
        finally:
            if execution.kept and not execution.answered and self.result_retention > 0:
                # Cancelled part-way: it may have done its work. Asked for again, it is not run again.
                self._kept.keep(call_id, execution.owner, error_frame(
                    call_id, ErrorCode.CODE_CANCELLED, f"call {call_id} of {entry.name} was cancelled on node "
                    f"{self.node_id} while it ran; it may or may not have run", node_id=self.node_id), None)
            self._active_executions.pop(call_id, None)
            if execution.abandon is not None:
                execution.abandon.cancel()
            if self._idle is not None and not self._active_executions:
                self._idle.set()

    async def _run_call(self, execution: _Execution, entry: RegisteredFunction, request: pb.CallRequest,
                        arguments: Attachment) -> None:
        call_id = request.call_id

        def answer(envelope: pb.Envelope, attachment: Attachment | None = None) -> None:
            self._answer(call_id, execution, envelope, attachment)

        try:
            args, kwargs = load_arguments(arguments)
        except Exception as exc:
            answer(exception_frame(call_id, exc, code=ErrorCode.CODE_BAD_ARGUMENTS, node_id=self.node_id))
            return
        limit = self.max_message_size - ENVELOPE_OVERHEAD
        try:
            if entry.kind == "sync":
                value = await self._workers.run(
                    functools.partial(self._in_thread, call_id, entry.func, *args, **kwargs))
            elif entry.kind == "async":
                await self._workers.acquire()
                try:
                    value = await entry.func(*args, **kwargs)
                finally:
                    self._workers.release()
            else:
                link = execution.link  # a stream goes on only on the link it came on
                if link is None:
                    return
                count = await self._stream(link, entry, call_id, args, kwargs, limit)
                link.send(pb.Envelope(end=pb.StreamEnd(call_id=call_id, count=count)))
                return
        except _TooLarge as exc:
            answer(error_frame(call_id, ErrorCode.CODE_TOO_LARGE, str(exc), node_id=self.node_id))
            return
        except Exception as exc:
            answer(exception_frame(call_id, exc, node_id=self.node_id))
            return
        try:
            payload = dump_value(value)
        except Exception as exc:
            answer(exception_frame(call_id, exc, code=ErrorCode.CODE_BAD_RESULT, node_id=self.node_id))
            return
        if len(payload) > limit:
            answer(error_frame(call_id, ErrorCode.CODE_TOO_LARGE,
                                  f"the result of {entry.name} is {len(payload)} bytes, over max_message_size "
                                  f"({self.max_message_size})", node_id=self.node_id))
            return
        inline, attached = split_payload(payload)
        answer(pb.Envelope(result=pb.Result(call_id=call_id, payload=inline)), attached)

    async def _stream(self, link: Link, entry: RegisteredFunction, call_id: str, args: tuple[Any, ...],
                      kwargs: dict[str, Any], limit: int) -> int:
        count = 0

        def item_frame(item: Any) -> tuple[pb.Envelope, Attachment | None]:
            payload = dump_value(item)
            if len(payload) > limit:
                raise _TooLarge(f"item {count} of {entry.name} is {len(payload)} bytes, over max_message_size")
            inline, attached = split_payload(payload)
            return pb.Envelope(item=pb.StreamItem(call_id=call_id, index=count, payload=inline)), attached

        if entry.kind == "async-generator":
            await self._workers.acquire()
            try:
                agen = entry.func(*args, **kwargs)
                try:
                    async for item in agen:
                        link.send(*item_frame(item))
                        count += 1
                finally:
                    await agen.aclose()
            finally:
                self._workers.release()
            return count

        stopped = threading.Event()

        def drain() -> None:
            nonlocal count
            generator = entry.func(*args, **kwargs)
            try:
                for item in generator:
                    if stopped.is_set():
                        return
                    envelope, attached = item_frame(item)
                    anyio.from_thread.run_sync(link.send, envelope, attached)
                    count += 1
            finally:
                generator.close()

        # anyio's threads, not the pool's: the generator hands each item to the loop with from_thread.
        await self._workers.acquire()
        try:
            await anyio.to_thread.run_sync(self._in_thread, call_id, drain, abandon_on_cancel=True,
                                           limiter=self._generator_threads)
        finally:
            stopped.set()
            self._workers.release()
        return count

    @functools.cached_property
    def _generator_threads(self) -> anyio.CapacityLimiter:
        return anyio.CapacityLimiter(self.max_concurrency)

    def _in_thread(self, call_id: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._busy_threads.add(call_id)
        try:
            return func(*args, **kwargs)
        finally:
            self._busy_threads.discard(call_id)


    # -- status ---------------------------------------------------------------------------

    @property
    def _latest(self) -> GatewaySet | None:
        return self._supervisor or self._finished

    _finished: GatewaySet | None = None

    @property
    def state(self) -> ConnectionState:
        return self._latest.state if self._latest is not None else ConnectionState.IDLE

    @property
    def _connection_healthy(self) -> bool:
        return self.state is ConnectionState.READY

    @property
    def _reconnect_count(self) -> int:
        """Reconnections that succeeded."""
        return self._latest.reconnect_count if self._latest is not None else 0

    @property
    def _reconnect_attempts(self) -> int:
        """Attempts to reconnect, successful or not."""
        return self._latest.reconnect_attempts if self._latest is not None else 0

    @property
    def _last_heartbeat_time(self) -> float | None:
        """Wall-clock time (``time.time()``) of the last frame from a gateway."""
        supervisor = self._latest
        return supervisor.last_received_wall if supervisor is not None else None

    def status(self) -> NodeStatus:
        supervisor = self._latest
        return NodeStatus(
            node_id=self.node_id, state=self.state.value, connection_healthy=self._connection_healthy,
            reconnect_count=self._reconnect_count, reconnect_attempts=self._reconnect_attempts,
            last_heartbeat_time=self._last_heartbeat_time,
            active_executions=len(self._active_executions), registered_functions=tuple(sorted(self._functions)),
            last_error=(supervisor.last_error if supervisor is not None else "") or self._last_error,
            gateway=",".join(str(address) for address in self.addresses),
            gateways=supervisor.gateways if supervisor is not None else {str(a): "idle" for a in self.addresses},
        )


class _TooLarge(Exception):
    pass


#: What ``_functions.get`` gives for a function unregistered while its call ran: treated as a stream
#: (it ends with its link).
_STREAMING = RegisteredFunction(name="", func=print, kind="generator", timeout=None, idempotent=False)


def _kind(fn: Callable[..., Any]) -> str:
    target = inspect.unwrap(fn)
    if inspect.isasyncgenfunction(target):
        return "async-generator"
    if inspect.isgeneratorfunction(target):
        return "generator"
    if inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(getattr(target, "__call__", None)):  # noqa: B004
        return "async"
    return "sync"


def _off_loop(token: anyio.lowlevel.EventLoopToken | None) -> bool:
    """Whether the caller runs outside the event loop that ``token`` names."""
    if token is None:
        return False
    try:
        return anyio.lowlevel.current_token() != token
    except RuntimeError:
        return True


def _g(value: float) -> str:
    return f"{value:g}"
