"""A dialled channel's state changes, waited for without leaving a gRPC watch behind on close."""

from __future__ import annotations

import logging

import anyio
import grpc
import grpc.aio

from easyremote_core._backend import HostTask

logger = logging.getLogger("easyremote.grpc")

# How long closing a channel waits for gRPC to report the end of its state watch.
WATCH_CLOSE_TIMEOUT = 1.0

_SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN


class ChannelStateWatch:
    """Tells waiters when one channel's state changes; :meth:`close` closes the channel.

    grpc.aio cannot take back a state watch it gave to gRPC core: a waiter cancelled while
    awaiting one (a probe's timer, a connect timeout) would leave it pending until the state
    changes or the channel closes, and its completion is then sent to the event loop that
    started it. Once that loop has closed, whichever loop of the process reads gRPC's
    completions next fails to hand it over and prints ``RuntimeError: Event loop is
    closed``. So one watcher, in a host task this object owns, keeps the single gRPC watch
    of the channel and wakes waiters through an event; cancelling a waiter never touches
    gRPC. :meth:`close` closes the channel, which completes the watch, and waits for the
    watcher to end.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self._changed = anyio.Event()
        self._watching = False  # a gRPC watch is pending
        self._watcher = HostTask.spawn(self._watch, name="easyremote-grpc-channel-watch")

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.channel.get_state(try_to_connect=try_to_connect)

    async def _watch(self) -> None:
        state = self.channel.get_state()
        while True:
            # Waiters re-check the state each time they wake: a waiter that saw another state
            # than this one (it changed before the watch began) is not left waiting.
            self._changed.set()
            self._changed = anyio.Event()
            if state is _SHUTDOWN:
                return
            self._watching = True
            try:
                await self.channel.wait_for_state_change(state)
            except Exception as exc:  # a channel closing under the watch may end it in a usage error
                logger.debug("gRPC channel watch ended: %r", exc)
                state = _SHUTDOWN
            else:
                state = self.channel.get_state()
            finally:
                self._watching = False

    async def wait_for_state_change(self, state: grpc.ChannelConnectivity) -> None:
        """Return once the channel has left ``state``; cancelling the caller leaves gRPC untouched."""
        while self.channel.get_state() is state:  # a state already left returns at once: callers re-check
            if not self._watcher.running:  # only a closed channel ends the watch: nothing will change
                await anyio.sleep_forever()
            await self._changed.wait()

    @property
    def pending(self) -> int:
        """How many watches gRPC has not completed yet (0 or 1)."""
        return int(self._watching)

    async def close(self) -> None:
        """Close the channel (ending its calls at once) and wait for the watcher to end."""
        await self.channel.close(grace=None)
        with anyio.move_on_after(WATCH_CLOSE_TIMEOUT, shield=True):
            await self._watcher.wait()
            return
        await self._watcher.aclose()
