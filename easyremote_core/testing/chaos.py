"""A loopback TCP proxy that injects link faults: resets, half-open black holes, latency, refusal.

Runs on anyio, so under asyncio and trio; ``ChaosProxy.in_thread`` hosts one for synchronous code.
"""

from __future__ import annotations

import logging
import math
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from types import TracebackType

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskGroup
from anyio.from_thread import BlockingPortal, start_blocking_portal
from anyio.streams.memory import MemoryObjectReceiveStream

__all__ = ["ChaosProxy", "ThreadedChaosProxy"]

logger = logging.getLogger(__name__)

_CHUNK = 65536
_QUEUE_DEPTH = 16  # chunks held per direction while they wait out the latency
_STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _linger_zero(sock: socket.socket | None) -> None:
    """Make the next close of ``sock`` send a TCP RST instead of a FIN."""
    if sock is None or sock.fileno() == -1:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:  # already torn down by the peer
        pass


class _Link:
    """One proxied connection: the dialling peer's leg and the upstream leg, unless black-holed at accept."""

    def __init__(self, client_sock: socket.socket, blackholed: bool) -> None:
        self.client_sock = client_sock
        self.client: SocketStream | None = None
        self.upstream: SocketStream | None = None
        self.blackholed = blackholed
        self.reset_requested = False
        self.scope = anyio.CancelScope()
        self.closed = anyio.Event()

    def request_reset(self) -> None:
        self.reset_requested = True
        self.scope.cancel()

    async def close(self) -> None:
        upstream_sock = self.upstream.extra(SocketAttribute.raw_socket) if self.upstream else None
        if self.reset_requested:
            _linger_zero(self.client_sock)
            _linger_zero(upstream_sock)
        with anyio.CancelScope(shield=True):
            if self.upstream is not None:
                await self.upstream.aclose()
            if self.client is not None:
                await self.client.aclose()
            else:
                self.client_sock.close()


class ChaosProxy:
    """Forward TCP between a dialling peer and ``upstream_host:upstream_port``, breaking the link on demand.

    ``async with proxy:`` binds and serves in the proxy's own task group; leaving it closes every socket.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", *,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._listener: socket.socket | None = None
        self._links: set[_Link] = set()
        self._latency = 0.0
        self._blackholed = False
        self._tg: TaskGroup | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._changed = anyio.Event()
        self.accepted_total = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> ChaosProxy:
        if self._exit_stack is not None:
            raise RuntimeError("this ChaosProxy is already running")
        async with AsyncExitStack() as stack:
            self._tg = tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)  # runs before the task group waits for its tasks
            stack.callback(self._close_listener)
            self._listen()
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        stack, self._exit_stack = self._exit_stack, None
        assert stack is not None
        try:
            return await stack.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the proxy is not running; use 'async with proxy:'")
        return self._port

    @property
    def address(self) -> str:
        return _format_address(self.host, self.port)

    @property
    def open_connections(self) -> int:
        return len(self._links)

    @property
    def latency(self) -> float:
        return self._latency

    @property
    def is_blackholed(self) -> bool:
        return self._blackholed

    @property
    def is_refusing(self) -> bool:
        return self._listener is None

    # -- faults ------------------------------------------------------------------------------

    async def reset(self, *, timeout: float = 10.0) -> None:
        """RST both legs of every open connection, and return once they are closed; keep accepting."""
        links = list(self._links)
        for link in links:
            link.request_reset()
        with anyio.fail_after(timeout):
            for link in links:
                await link.closed.wait()
        logger.debug("proxy %s reset %d connection(s)", self.address, len(links))

    def blackhole(self) -> None:
        """Go half-open: connections stay open but bytes vanish both ways; new ones never reach upstream."""
        self._blackholed = True
        for link in self._links:
            link.blackholed = True

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` each way, keeping order; applies to chunks read from now on."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"latency must be a finite number of seconds >= 0, got {seconds!r}")
        self._latency = seconds

    def refuse(self) -> None:
        """Stop listening, so new connects are refused; open connections go on."""
        self._close_listener()

    def heal(self) -> None:
        """Pass bytes again: reset the connections that were black-holed (they lost data) and listen again."""
        self._blackholed = False
        for link in list(self._links):
            if link.blackholed:
                link.request_reset()
        if self._listener is None and self._tg is not None:
            self._listen()

    async def wait_connections(self, n: int, *, timeout: float = 10.0) -> None:
        """Wait until at least ``n`` connections are open."""
        await self._wait_for(lambda: self.open_connections >= n, timeout)

    async def wait_accepted(self, n: int, *, timeout: float = 10.0) -> None:
        """Wait until ``n`` connections have been accepted since the proxy started (reconnects count)."""
        await self._wait_for(lambda: self.accepted_total >= n, timeout)

    @classmethod
    @contextmanager
    def in_thread(cls, upstream_port: int, upstream_host: str = "127.0.0.1", *, host: str = "127.0.0.1",
                  port: int = 0, backend: str = "asyncio") -> Iterator[ThreadedChaosProxy]:
        """Run a proxy on its own event loop in a worker thread, controlled by synchronous calls."""
        proxy = cls(upstream_port, upstream_host, host=host, port=port)
        with start_blocking_portal(backend) as portal, portal.wrap_async_context_manager(proxy):
            yield ThreadedChaosProxy(proxy, portal)

    # -- internals ---------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_for(self, condition: Callable[[], bool], timeout: float) -> None:
        with anyio.fail_after(timeout):
            while not condition():
                await self._changed.wait()

    def _listen(self) -> None:
        assert self._tg is not None
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # After refuse() the proxy listens again on the port it had.
            sock.bind((self.host, self._port if self._port is not None else self._requested_port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        self._listener = sock
        self._tg.start_soon(self._accept_loop, sock)

    def _close_listener(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            anyio.notify_closing(sock)  # wakes the accept loop with ClosedResourceError
            sock.close()

    async def _accept_loop(self, sock: socket.socket) -> None:
        assert self._tg is not None
        while sock.fileno() != -1:  # refuse() may close it before this task first runs
            try:
                await anyio.wait_readable(sock)
            except anyio.ClosedResourceError:
                return
            try:
                client_sock, _ = sock.accept()
            except BlockingIOError:
                continue
            except OSError:  # closed by refuse() between the wake-up and the accept
                return
            link = _Link(client_sock, self._blackholed)
            self._links.add(link)
            self.accepted_total += 1
            self._notify()
            self._tg.start_soon(self._serve_link, link)

    async def _serve_link(self, link: _Link) -> None:
        try:
            with link.scope:
                link.client = await SocketStream.from_socket(link.client_sock)
                if link.blackholed:  # accepted while half-open: it never reaches upstream
                    await self._swallow(link, link.client)
                    return
                try:
                    link.upstream = await anyio.connect_tcp(self.upstream_host, self.upstream_port)
                except OSError as exc:
                    logger.debug("proxy %s: upstream refused: %s", self.address, exc)
                    link.reset_requested = True
                    return
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._pump, link, link.client, link.upstream)
                    tg.start_soon(self._pump, link, link.upstream, link.client)
        finally:
            await link.close()
            self._links.discard(link)
            link.closed.set()
            self._notify()

    async def _swallow(self, link: _Link, stream: SocketStream) -> None:
        """Read and drop everything until the peer goes away; heal() resets the link."""
        while True:
            try:
                await stream.receive(_CHUNK)
            except (anyio.EndOfStream, *_STREAM_ERRORS):
                await anyio.sleep_forever()  # a half-open link learns nothing; wait for heal() or exit

    async def _pump(self, link: _Link, source: SocketStream, sink: SocketStream) -> None:
        """Copy one direction; a chunk waits out the latency in a queue so that order is kept."""
        send, receive = anyio.create_memory_object_stream[tuple[float, bytes]](_QUEUE_DEPTH)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._deliver, link, receive, sink)
            async with send:
                while True:
                    try:
                        data = await source.receive(_CHUNK)
                    except anyio.EndOfStream:
                        break
                    except _STREAM_ERRORS:
                        if not link.blackholed:  # a reset on one leg becomes a reset on the other
                            link.request_reset()
                        return
                    if not link.blackholed:
                        await send.send((anyio.current_time() + self._latency, data))

    async def _deliver(self, link: _Link, queue: MemoryObjectReceiveStream[tuple[float, bytes]],
                       sink: SocketStream) -> None:
        async with queue:
            async for due, data in queue:
                await anyio.sleep_until(due)
                if link.blackholed:
                    continue
                try:
                    await sink.send(data)
                except _STREAM_ERRORS:
                    link.request_reset()
                    return
        if not link.blackholed:
            try:
                await sink.send_eof()  # pass the half-close on
            except _STREAM_ERRORS:
                link.request_reset()


class ThreadedChaosProxy:
    """Synchronous handle on a ``ChaosProxy`` that runs in a worker thread (from ``ChaosProxy.in_thread``)."""

    def __init__(self, proxy: ChaosProxy, portal: BlockingPortal) -> None:
        self._proxy = proxy
        self._portal = portal

    @property
    def port(self) -> int:
        return self._proxy.port

    @property
    def address(self) -> str:
        return self._proxy.address

    @property
    def open_connections(self) -> int:
        return self._proxy.open_connections

    @property
    def accepted_total(self) -> int:
        return self._proxy.accepted_total

    def reset(self, *, timeout: float = 10.0) -> None:
        self._portal.call(lambda: self._proxy.reset(timeout=timeout))

    def blackhole(self) -> None:
        self._portal.call(self._proxy.blackhole)

    def set_latency(self, seconds: float) -> None:
        self._portal.call(self._proxy.set_latency, seconds)

    def refuse(self) -> None:
        self._portal.call(self._proxy.refuse)

    def heal(self) -> None:
        self._portal.call(self._proxy.heal)

    def wait_connections(self, n: int, *, timeout: float = 10.0) -> None:
        self._portal.call(lambda: self._proxy.wait_connections(n, timeout=timeout))

    def wait_accepted(self, n: int, *, timeout: float = 10.0) -> None:
        self._portal.call(lambda: self._proxy.wait_accepted(n, timeout=timeout))
