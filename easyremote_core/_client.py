"""Clients: call functions through the gateway, waiting out reconnections within each call's timeout."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import sniffio
from anyio.streams.memory import MemoryObjectSendStream

from ._address import Address, parse_addresses
from ._backend import HostTask, clock
from ._backend import run as run_loop
from ._config import LinkSettings, number, whole
from ._errors import (
    CallTimeoutError,
    ConnectionLostError,
    EasyRemoteError,
    GatewayUnavailableError,
    MessageTooLargeError,
    StreamingFunctionError,
)
from ._gateways import GatewaySet, LinkPlan
from ._link import Link
from ._node import ENVELOPE_OVERHEAD, TOKEN_ENV
from ._plugins import PluginManager, get_plugin_manager
from ._probes import HealthProbe
from ._protocol import (
    Attachment,
    ErrorCode,
    dump_arguments,
    error_from_frame,
    load_value,
    payload_of,
    pb,
    split_payload,
)
from ._retry import RetryPolicy
from ._supervisor import ConnectionState, ConnectionSupervisor, StateCallback
from ._transport import DEFAULT_MAX_MESSAGE_SIZE, TLSConfig, Transport

logger = logging.getLogger("easyremote.client")


@dataclass(frozen=True)
class NodeInfo:
    """A node as the gateway sees it."""

    node_id: str
    functions: tuple[str, ...]
    state: str
    in_flight: int
    max_queue_size: int
    connected_for: float
    peer: str


class _LinkLost:
    def __init__(self, reason: str) -> None:
        self.reason = reason


#: What ``_Answers.receive`` returns once the call's deadline has passed.
_TIMED_OUT = object()


class _Answers:
    """What arrives for one call, in order: (envelope, attachment) pairs, or ``_LinkLost``.

    One reader, who waits only when nothing is there, until the call's deadline. On asyncio
    it waits on a future with a timer of the loop's (``call_at``): a cancel scope and an
    ``anyio.Event`` per wait cost a call several times as much (each looks up the running
    loop and the current task, which on Python 3.11 is a ``getpid`` system call each).
    """

    __slots__ = ("_items", "_loop", "_waiter", "_closed")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._items: deque[Any] = deque()
        self._loop = loop  # None: not asyncio (trio)
        self._waiter: asyncio.Future[Any] | anyio.Event | None = None
        self._closed = False

    def send_nowait(self, item: Any) -> None:
        if self._closed:
            return
        self._items.append(item)
        waiter = self._waiter
        if waiter is None:
            return
        if isinstance(waiter, anyio.Event):
            waiter.set()
        elif not waiter.done():
            waiter.set_result(None)

    async def receive(self, deadline: float) -> Any:
        """The next answer, or ``_TIMED_OUT`` once the loop's clock reaches ``deadline``."""
        loop = self._loop
        while not self._items:
            if loop is None:
                event = self._waiter = anyio.Event()
                try:
                    with anyio.move_on_after(deadline - anyio.current_time()):
                        await event.wait()
                finally:
                    self._waiter = None
                if not self._items and anyio.current_time() >= deadline:
                    return _TIMED_OUT
                continue
            waiter = self._waiter = loop.create_future()
            timer = loop.call_at(deadline, _time_out, waiter)
            try:
                woken_by = await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if woken_by is _TIMED_OUT and not self._items:
                return _TIMED_OUT
        return self._items.popleft()

    def close(self) -> None:
        self._closed = True
        self._items.clear()


def _time_out(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


@dataclass(eq=False)
class _Pending:
    request: pb.CallRequest
    answers: _Answers
    link: Link | None = None
    attachment: Attachment | None = None  # the arguments, when they travel apart from the envelope
    routed: pb.Routed | None = None  # the node that took it, for a call that must not run twice


class _ClientGateway:
    """The client's side of its link to one gateway."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.supervisor: ConnectionSupervisor | None = None

    def on_frame(self, envelope: pb.Envelope, attachment: Attachment | None) -> None:
        if envelope.WhichOneof("body") == "go_away":
            link = self.supervisor.link if self.supervisor is not None else None
            if link is not None:
                link.close(f"gateway asked to reconnect later: {envelope.go_away.reason}")
            return
        self.client._on_frame(envelope, attachment)


class AsyncClient:
    """Calls functions through a gateway: ``async with AsyncClient("host:8080") as c``.

    ``gateway`` names one gateway or several (a list, or addresses separated by commas;
    a host name that resolves to several addresses is several gateways). The client keeps
    a link to each and sends its calls through one; when that link is lost, its calls move
    at once to another gateway that is ready.
    """

    def __init__(
        self,
        gateway: str,
        timeout: float = 30.0,
        auth_token: str | None = None,
        *,
        transport: str | Transport | None = None,
        retry_policy: str | RetryPolicy | None = None,
        health_probes: Iterable[str | HealthProbe] | None = None,
        reconnect_interval: float = 2.0,
        max_reconnect_interval: float = 60.0,
        max_retry_attempts: int | None = None,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 15.0,
        health_check_interval: float = 30.0,
        connection_timeout: float = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        tls: TLSConfig | None = None,
        plugins: PluginManager | None = None,
    ) -> None:
        self.addresses = parse_addresses(gateway, parameter="gateway")
        self.address = self.addresses[0]
        self.timeout = number("timeout", timeout, above=0)
        self.settings = LinkSettings(
            reconnect_interval=reconnect_interval, max_reconnect_interval=max_reconnect_interval,
            max_retry_attempts=max_retry_attempts, heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout, health_check_interval=health_check_interval,
            connection_timeout=connection_timeout,
        )
        self.max_message_size = whole("max_message_size", max_message_size, minimum=ENVELOPE_OVERHEAD * 2)
        self.auth_token = auth_token if auth_token is not None else os.environ.get(TOKEN_ENV)
        self._plugins = plugins or get_plugin_manager()
        self._plan = LinkPlan(self._plugins, self.addresses, self.settings, transport=transport,
                              retry_policy=retry_policy, health_probes=health_probes, tls=tls,
                              max_message_size=self.max_message_size)
        self._pending: dict[str, _Pending] = {}
        # Call ids: a random prefix of this client and a count, unique without a uuid4 (a
        # getrandom call) per call. Calls belong to the client key, so an id guessed is no use.
        self._call_prefix = secrets.token_hex(12)
        self._call_numbers = itertools.count(1)
        self._queries: dict[str, MemoryObjectSendStream[pb.NodeList]] = {}
        #: Functions a node has answered: a call for one waits for its nodes if none is there
        #: (a gateway that restarted without a state file does not know them yet).
        self._served: set[str] = set()
        self._supervisor: GatewaySet | None = None
        self._current: ConnectionSupervisor | None = None  # the gateway calls go through
        self._now: Callable[[], float] = anyio.current_time  # the loop's clock, once started
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop, when it is asyncio's
        self._host: HostTask | None = None
        self._callbacks: list[StateCallback] = []
        #: Sent in every hello: the gateway lets only this client re-attach to or cancel its calls.
        self._key = secrets.token_bytes(16)

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start connecting in the background; calls wait until the link is ready.

        ``async with`` is the usual form. The connection runs in a task the client owns,
        so ``start()`` and ``aclose()`` may also be called from different tasks of the
        loop, with task groups opened and closed in between. Starting a started client
        does nothing.
        """
        if self._host is not None:
            return
        self._now = clock()
        self._loop = asyncio.get_running_loop() if sniffio.current_async_library() == "asyncio" else None
        self._supervisor = GatewaySet([self._supervise(address, first=n == 0)
                                       for n, address in enumerate(await self._plan.gateways())],
                                      make=functools.partial(self._supervise, first=False), names=self.addresses,
                                      refresh=self.settings.health_check_interval)
        for callback in self._callbacks:
            self._supervisor.on_state_change(callback)
        self._host = HostTask.spawn(self._keep_connected, name=f"easyremote client of {self._where}")

    def _supervise(self, address: Address, *, first: bool) -> ConnectionSupervisor:
        gateway = _ClientGateway(self)
        gateway.supervisor = self._plan.supervisor(address, first=first, role="client", hello=self._hello,
                                                   on_frame=gateway.on_frame, on_link_lost=self._on_link_lost)
        return gateway.supervisor

    async def _keep_connected(self) -> None:
        assert self._supervisor is not None
        try:
            await self._supervisor.run()
        except EasyRemoteError as exc:  # kept as supervisor.fatal_error; calls raise it
            logger.error("Client gave up on %s: %s", self._where, exc)
        finally:
            for pending in list(self._pending.values()):
                pending.answers.send_nowait(_LinkLost("the client is closed"))

    async def aclose(self) -> None:
        """Close the link and end the background task; safe to call twice, or before ``start()``."""
        host, self._host = self._host, None
        if host is None:
            return
        try:
            await host.aclose()
        finally:
            await self._plan.aclose()

    def on_state_change(self, callback: StateCallback) -> None:
        self._callbacks.append(callback)
        if self._supervisor is not None:
            self._supervisor.on_state_change(callback)

    @property
    def state(self) -> ConnectionState:
        return self._supervisor.state if self._supervisor is not None else ConnectionState.IDLE

    @property
    def reconnect_count(self) -> int:
        """Reconnections that succeeded: sessions established after an earlier one ended."""
        return self._supervisor.reconnect_count if self._supervisor is not None else 0

    @property
    def reconnect_attempts(self) -> int:
        """Attempts to reconnect, successful or not (each "Attempting to reconnect...")."""
        return self._supervisor.reconnect_attempts if self._supervisor is not None else 0

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Return once linked to the gateway; ``GatewayUnavailableError`` if not within ``timeout``.

        ``timeout`` defaults to the client's ``timeout``.
        """
        limit = self.timeout if timeout is None else number("timeout", timeout, above=0)
        with anyio.move_on_after(limit):
            await self._link()
            return
        supervisor = self._supervisor
        reason = (supervisor.last_error if supervisor is not None else "") or "not connected"
        raise GatewayUnavailableError(f"{self._where} was not reachable within {limit:g} s ({reason})")

    # -- calls ----------------------------------------------------------------------------

    async def execute(self, function: str, *args: Any, node_id: str | None = None,
                      timeout: float | None = None, **kwargs: Any) -> Any:
        """Run ``function(*args, **kwargs)`` on a node and return its result.

        ``node_id`` pins a node; ``timeout`` bounds the whole call (waiting for
        the gateway or a reconnecting node included). A function whose own
        parameters are named ``node_id`` or ``timeout`` can be called with ``call``.
        """
        return await self.call(function, args, kwargs, node_id=node_id, timeout=timeout)

    async def call(self, function: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, *,
                   node_id: str | None = None, timeout: float | None = None) -> Any:
        remote = self._open_call(function, args, kwargs or {}, node_id, timeout, streaming=False)
        try:
            envelope, attachment = await remote.next_answer()
        finally:
            remote.finish("the caller was cancelled")
        kind = envelope.WhichOneof("body")
        if kind == "result":
            return load_value(payload_of(envelope.result, attachment))
        if kind == "error":
            raise error_from_frame(envelope.error)
        raise StreamingFunctionError(f"{function} is a generator function: iterate over "
                                     f"stream({function!r}, ...) instead of calling execute()")

    def stream(self, function: str, *args: Any, node_id: str | None = None,
               timeout: float | None = None, **kwargs: Any) -> RemoteStream:
        """Iterate over the items a generator function yields on a node: ``async for item in ...``.

        ``timeout`` bounds the whole stream. Leaving the loop early is safe; ``aclose()``
        (or ``async with``) also tells the node to stop at once.
        """
        return RemoteStream(self._open_call(function, args, kwargs, node_id, timeout, streaming=True))

    def _open_call(self, function: str, args: tuple[Any, ...], kwargs: dict[str, Any], node_id: str | None,
                   timeout: float | None, *, streaming: bool) -> _RemoteCall:
        if not isinstance(function, str) or not function:
            raise TypeError(f"function must be a function name, got {function!r}")
        limit = number("timeout", timeout, above=0) if timeout is not None else self.timeout
        payload = dump_arguments(tuple(args), dict(kwargs))
        if len(payload) > self.max_message_size - ENVELOPE_OVERHEAD:
            raise MessageTooLargeError(
                f"the arguments of {function} pickle to {len(payload)} bytes, over max_message_size "
                f"({self.max_message_size})"
            )
        call_id = f"{self._call_prefix}{next(self._call_numbers):08x}"
        inline, attached = split_payload(payload)
        request = pb.CallRequest(call_id=call_id, function=function, payload=inline,
                                 node_id=node_id or "", streaming=streaming)
        return _RemoteCall(self, request, limit, attached)

    async def _link(self) -> Link:
        gateways = self._supervisor
        if gateways is None:
            raise RuntimeError("the client is not started: use 'async with AsyncClient(...)'")
        while True:
            link = self._ready_link()
            if link is not None:
                return link
            await gateways.wait_ready()

    def _ready_link(self) -> Link | None:
        """The link calls go through, if one is ready now (the usual case: a call waits for
        nothing). It stays the same gateway while its link is up, then moves to another."""
        current = self._current
        if current is not None and current.state is ConnectionState.READY:
            return current.link
        gateways = self._supervisor
        if gateways is None:
            return None
        for supervisor in gateways.supervisors:
            if supervisor.state is ConnectionState.READY and supervisor.link is not None:
                if current is not None and current is not supervisor:
                    logger.info("Calls now go through gateway %s", supervisor.address)
                self._current = supervisor
                return supervisor.link
        return None

    def _other_ready_link(self, link: Link | None) -> Link | None:
        """A ready link to a gateway other than the one ``link`` goes to."""
        gateways = self._supervisor
        if gateways is None:
            return None
        for supervisor in gateways.supervisors:
            if supervisor.state is ConnectionState.READY and supervisor.link not in (None, link):
                return supervisor.link
        return None

    @property
    def _where(self) -> str:
        if len(self.addresses) == 1:
            return f"gateway {self.address}"
        return "gateways " + ", ".join(str(address) for address in self.addresses)

    def _send(self, pending: _Pending, link: Link, remaining: float) -> None:
        request = pending.request
        request.attempt += 1
        request.timeout = remaining
        current = self._current
        if current is not None and current.welcome is not None:
            request.owner = current.welcome.owner  # the same at every gateway: it says whose call this is
        request.served_before = request.function in self._served
        routed = pending.routed
        if routed is not None:  # asked again: the node that took it attaches it or gives its answer
            request.resume = True
            request.node_id = routed.node_id
            request.incarnation = routed.incarnation
        pending.link = link
        link.send(pb.Envelope(call=request), pending.attachment)

    async def list_nodes(self, timeout: float | None = None) -> list[NodeInfo]:
        """The nodes the gateway knows, with their functions and state (every page of them)."""
        request_id = uuid.uuid4().hex
        send, receive = anyio.create_memory_object_stream[pb.NodeList](1)
        self._queries[request_id] = send
        nodes: list[pb.NodeInfo] = []
        try:
            with anyio.fail_after(timeout or self.timeout):
                token = ""
                while True:
                    link = await self._link()
                    link.send(pb.Envelope(list_nodes=pb.ListNodes(request_id=request_id, page_token=token)))
                    reply = await receive.receive()
                    nodes.extend(reply.nodes)
                    if not reply.next_page_token or reply.next_page_token <= token:
                        break
                    token = reply.next_page_token
        except TimeoutError:
            raise GatewayUnavailableError(f"{self._where} did not answer list_nodes in time") from None
        finally:
            del self._queries[request_id]
            send.close()
            receive.close()
        return [NodeInfo(node_id=n.node_id, functions=tuple(n.functions), state=n.state, in_flight=n.in_flight,
                         max_queue_size=n.max_queue_size, connected_for=n.connected_for, peer=n.peer)
                for n in nodes]

    # -- the link -------------------------------------------------------------------------

    def _hello(self) -> pb.Hello:
        return pb.Hello(role=pb.ROLE_CLIENT, token=self.auth_token or "", client_key=self._key,
                        heartbeat_interval=self.settings.heartbeat_interval,
                        heartbeat_timeout=self.settings.heartbeat_timeout, software="easyremote")

    def _on_frame(self, envelope: pb.Envelope, attachment: Attachment | None) -> None:
        kind = envelope.WhichOneof("body")
        if kind in ("result", "error", "item", "end"):
            pending = self._pending.get(getattr(envelope, kind).call_id)
            if pending is not None:
                if kind != "error" or envelope.error.node_id:  # a node answered: the function is served
                    self._served.add(pending.request.function)
                pending.answers.send_nowait((envelope, attachment))
        elif kind == "routed":
            pending = self._pending.get(envelope.routed.call_id)
            if pending is not None:
                pending.routed = envelope.routed
        elif kind == "node_list":
            query = self._queries.get(envelope.node_list.request_id)
            if query is not None:
                query.send_nowait(envelope.node_list)

    def _on_link_lost(self, link: Link, reason: str) -> None:
        for pending in list(self._pending.values()):
            if pending.link is link:
                pending.answers.send_nowait(_LinkLost(reason))


class _RemoteCall:
    """One call in flight: sends it, asks again after a reconnect, cancels it on timeout.

    It holds no cancel scope between awaits, so a stream may be abandoned anywhere.
    """

    def __init__(self, client: AsyncClient, request: pb.CallRequest, timeout: float,
                 attachment: Attachment | None = None) -> None:
        self._client = client
        self._request = request
        self._attachment = attachment
        self._timeout = timeout
        self._deadline: float | None = None
        self._pending: _Pending | None = None
        self._items = 0
        self.answered = False  # a final answer (result, error or end of stream) arrived
        self.finished = False
        self._lost: tuple[pb.Envelope, Attachment | None] | None = None  # one gateway's NodeLost, checked elsewhere

    async def next_answer(self) -> tuple[pb.Envelope, Attachment | None]:
        """The next answer frame; raises ``CallTimeoutError`` or ``GatewayUnavailableError`` at the deadline."""
        if self._deadline is None:
            client = self._client
            if client._supervisor is None:
                raise RuntimeError("the client is not started: use 'async with AsyncClient(...)'")
            self._deadline = client._now() + self._timeout
            self._answers = _Answers(client._loop)
            self._pending = _Pending(request=self._request, answers=self._answers, attachment=self._attachment)
            client._pending[self._request.call_id] = self._pending
        answer = await self._answer()
        if answer is not _TIMED_OUT:
            return answer
        if self._pending is None or self._pending.link is None:  # never reached the gateway
            supervisor = self._client._supervisor
            reason = (supervisor.last_error if supervisor is not None else "") or "not connected"
            raise GatewayUnavailableError(
                f"{self._client._where} was not reachable within {self._timeout:g} s ({reason})")
        self.finish("timed out")
        raise CallTimeoutError(f"{self._request.function} did not answer within {self._timeout:g} s")

    async def _answer(self) -> Any:
        """The next answer, or ``_TIMED_OUT`` at the call's deadline."""
        assert self._pending is not None and self._deadline is not None
        if self._pending.link is None and not await self._dispatch():
            return _TIMED_OUT
        while True:
            answer = await self._answers.receive(self._deadline)
            if answer is _TIMED_OUT:
                return answer
            if isinstance(answer, _LinkLost):
                if self._items:  # a stream cannot be resumed part-way
                    raise ConnectionLostError(f"the link to the gateway was lost mid-stream: {answer.reason}")
                logger.info("Link lost during call %s of %r (%s); asking again after reconnecting",
                            self._request.call_id, self._request.function, answer.reason)
                if not await self._dispatch():
                    return _TIMED_OUT
                continue
            kind = answer[0].WhichOneof("body")
            if kind == "error":
                code = answer[0].error.code
                if self._lost is not None and code in (ErrorCode.CODE_NODE_LOST, ErrorCode.CODE_UNKNOWN_CALL):
                    answer = self._lost  # not there either: what the first gateway said stands
                elif code == ErrorCode.CODE_NODE_LOST and self._lost is None and self._ask_elsewhere():
                    self._lost = answer
                    continue
            if kind == "item":
                self._items += 1
            else:
                self.answered = True
            return answer

    def _ask_elsewhere(self) -> bool:
        """A gateway lost its link to the node running this call, which must not run twice. The
        node may live on, linked to another gateway: if one is ready, ask through it whether that
        node's same run is there (it attaches the call or answers it again) before giving up."""
        pending = self._pending
        assert pending is not None and self._deadline is not None
        if pending.routed is None or self._request.streaming or self._items:
            return False
        client = self._client
        link = client._other_ready_link(pending.link)
        if link is None:
            return False
        logger.info("Call %s of %r was lost with node %s at one gateway; asking another whether the node "
                    "is linked there", self._request.call_id, self._request.function, pending.routed.node_id)
        self._request.only_if_here = True
        client._send(pending, link, max(self._deadline - client._now(), 0.001))
        return True

    async def _dispatch(self) -> bool:
        """Send the call once a link is ready; ``False`` if none is by the deadline."""
        assert self._pending is not None and self._deadline is not None
        client = self._client
        link = client._ready_link()
        if link is None:
            with anyio.move_on_after(self._deadline - client._now()):
                link = await client._link()
            if link is None:
                return False
        client._send(self._pending, link, max(self._deadline - client._now(), 0.001))
        return True

    def finish(self, reason: str = "") -> None:
        """Forget the call; if it is still running remotely, ask the node to stop (``reason``)."""
        if self.finished:
            return
        self.finished = True
        pending = self._pending
        if pending is None:
            return
        self._client._pending.pop(self._request.call_id, None)
        link = pending.link
        if reason and not self.answered and link is not None and not link.ended.is_set():
            link.send(pb.Envelope(cancel=pb.Cancel(call_id=self._request.call_id, reason=reason)))
        pending.answers.close()


class RemoteStream:
    """The items of a remote generator function, in order (``AsyncClient.stream``)."""

    def __init__(self, call: _RemoteCall) -> None:
        self._call = call
        self._ended = False

    def __aiter__(self) -> RemoteStream:
        return self

    async def __anext__(self) -> Any:
        if self._ended:
            raise StopAsyncIteration
        try:
            envelope, attachment = await self._call.next_answer()
        except BaseException:
            self._ended = True
            self._call.finish("the caller stopped reading")
            raise
        kind = envelope.WhichOneof("body")
        if kind == "item":
            return load_value(payload_of(envelope.item, attachment))
        self._ended = True
        self._call.finish()
        if kind == "end":
            raise StopAsyncIteration
        if kind == "result":  # the function was not a generator after all
            return load_value(payload_of(envelope.result, attachment))
        raise error_from_frame(envelope.error)

    async def aclose(self) -> None:
        """Stop early: the node is asked to stop producing."""
        self._ended = True
        self._call.finish("the caller stopped reading")

    async def __aenter__(self) -> RemoteStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Abandoned without aclose(): forget it (the node's stream ends by itself).
        if not self._call.finished and self._call._pending is not None:
            self._call._client._pending.pop(self._call._request.call_id, None)


class Client:
    """The blocking client: ``Client("host:8080").execute("add", 1, 2)``.

    It runs an :class:`AsyncClient` on an event loop in a daemon thread of its own,
    so a client that is never closed does not keep the program from exiting.
    """

    def __init__(self, gateway: str, timeout: float = 30.0, auth_token: str | None = None, **options: Any) -> None:
        self._options = dict(gateway=gateway, timeout=timeout, auth_token=auth_token, **options)
        AsyncClient(**self._options)  # validate here, before a thread starts
        self._thread: threading.Thread | None = None
        started = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            try:
                async with anyio.from_thread.BlockingPortal() as portal, AsyncClient(**self._options) as client:
                    self._portal, self._client = portal, client
                    self._closing = anyio.Event()
                    started.set()
                    await self._closing.wait()
            except BaseException as exc:
                failure.append(exc)
                raise
            finally:
                started.set()

        self._thread = threading.Thread(target=run_loop, args=(main,), daemon=True,
                                        name=f"easyremote-client-{gateway}")
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]

    @property
    def address(self) -> str:
        return str(self._client.address)

    @property
    def state(self) -> ConnectionState:
        return self._client.state

    @property
    def reconnect_count(self) -> int:
        return self._client.reconnect_count

    @property
    def reconnect_attempts(self) -> int:
        return self._client.reconnect_attempts

    def execute(self, function: str, *args: Any, node_id: str | None = None, timeout: float | None = None,
                **kwargs: Any) -> Any:
        return self.call(function, args, kwargs, node_id=node_id, timeout=timeout)

    def call(self, function: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, *,
             node_id: str | None = None, timeout: float | None = None) -> Any:
        return self._portal.call(functools.partial(self._client.call, function, args, kwargs,
                                                   node_id=node_id, timeout=timeout))

    def stream(self, function: str, *args: Any, node_id: str | None = None, timeout: float | None = None,
               **kwargs: Any) -> Iterator[Any]:
        """Iterate over a generator function's items; one task on the loop owns the whole stream."""
        send, receive = anyio.create_memory_object_stream[tuple[str, Any]](16)

        async def produce(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            async with send:
                task_status.started()
                try:
                    async with self._client.stream(function, *args, node_id=node_id, timeout=timeout,
                                                   **kwargs) as items:
                        async for item in items:
                            await send.send(("item", item))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass  # the caller stopped reading
                except Exception as exc:
                    await send.send(("error", exc))

        running, _ = self._portal.start_task(produce)
        try:
            while True:
                try:
                    kind, value = self._portal.call(receive.receive)
                except anyio.EndOfStream:
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            running.cancel()
            self._portal.call(receive.aclose)

    def list_nodes(self, timeout: float | None = None) -> list[NodeInfo]:
        return self._portal.call(self._client.list_nodes, timeout)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until linked to the gateway; ``GatewayUnavailableError`` if not within ``timeout``."""
        self._portal.call(self._client.wait_ready, timeout)

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            self._portal.call(self._closing.set)
        except RuntimeError:
            pass  # the loop has already gone
        thread.join(10)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
