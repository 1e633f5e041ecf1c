"""How a gateway starts, serves in any thread, and stops from any thread or on a signal."""

from __future__ import annotations

import errno
import functools
import logging
import signal
from collections.abc import Generator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.to_thread

from .._backend import HostTask, off_loop
from .._logs import console_logging
from .._serving import StopSwitch, in_main_thread, run_blocking
from .._transport import LinkOptions, Listener, Transport

logger = logging.getLogger("easyremote.gateway")

#: How long starting (binding) or stopping (closing every session) may take.
STOP_TIMEOUT = 30.0


class ServingLifecycle:
    """``start``/``stop``/``close``/``serve`` around one coroutine, ``_serve_in_host(started)``.

    The coroutine runs in a host task the gateway owns; it sets ``started`` once listening
    (or on failure) and returns once ``_stop_requested`` is set.
    """

    host: str
    _requested_port: int

    def __init__(self) -> None:
        self._host_task: HostTask | None = None  # serves, from start() until stopped
        self._stop_switch = StopSwitch("gateway")
        self._stop_requested: anyio.Event | None = None

    async def _serve_in_host(self, started: anyio.Event) -> None:
        raise NotImplementedError

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

    async def __aenter__(self) -> Any:
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


class GatewayStop:
    """What ``Gateway.stop()`` returns: the stop is requested when it is made; awaiting it waits until done.

    Not a coroutine, so calling ``gateway.stop()`` from another thread without awaiting
    it is a plain request and no "never awaited" warning.
    """

    __slots__ = ("_gateway",)

    def __init__(self, gateway: ServingLifecycle) -> None:
        self._gateway = gateway
        gateway._stop_switch.request()

    def __await__(self) -> Generator[Any, None, None]:
        return self._gateway._shutdown().__await__()


async def open_listeners(stack: AsyncExitStack, endpoints: list[tuple[Transport, str, int]],
                         options: LinkOptions) -> list[tuple[str, str, Listener]]:
    """Listen on every ``(transport, host, port)``; ``stack`` closes the listeners and transports."""
    listeners = []
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
        listeners.append((transport.name, host, listener))
    return listeners


def _listen_error(exc: OSError, transport: str, host: str, port: int) -> OSError:
    """``exc`` with the address in its words (the socket module's say only "Address already in use")."""
    if exc.errno == errno.EADDRINUSE:
        return OSError(exc.errno, f"port {port} on {host} is already in use (transport {transport}); "
                                  "is another gateway running?")
    if exc.errno is not None:
        return OSError(exc.errno, f"cannot listen on {host}:{port} (transport {transport}): {exc.strerror}")
    return exc
