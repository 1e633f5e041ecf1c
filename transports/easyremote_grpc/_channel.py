"""A dialled channel's state changes, waited for without leaving a gRPC watch behind on close."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio

# How long closing a channel waits for gRPC to report the end of its state watches.
WATCH_CLOSE_TIMEOUT = 1.0


class ChannelStateWatch:
    """Waits for state changes of one channel; :meth:`close` closes the channel.

    grpc.aio cannot take back a state watch it gave to gRPC core: a caller cancelled while
    waiting (a probe's timer, a connect timeout) leaves the watch pending until the state
    changes or the channel closes, and its completion is then sent to the event loop that
    started it. Once that loop has closed, whichever loop of the process reads gRPC's
    completions next fails to hand it over and prints ``RuntimeError: Event loop is
    closed``. So here a cancelled wait leaves its watch running in a task of this object
    (one per observed state, which the next wait for that state reuses), and
    :meth:`close` closes the channel and waits until every watch has completed.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self._watches: dict[grpc.ChannelConnectivity, asyncio.Task[None]] = {}

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.channel.get_state(try_to_connect=try_to_connect)

    async def wait_for_state_change(self, state: grpc.ChannelConnectivity) -> None:
        """Return once the channel has left ``state``; cancelling the caller leaves the watch to ``close``."""
        watch = self._watches.get(state)
        if watch is None or watch.done():
            watch = asyncio.ensure_future(self.channel.wait_for_state_change(state))
            self._watches[state] = watch
        await asyncio.shield(watch)

    @property
    def pending(self) -> int:
        """How many watches gRPC has not completed yet."""
        return sum(not watch.done() for watch in self._watches.values())

    async def close(self) -> None:
        """Close the channel (ending its calls at once) and wait for its watches to complete."""
        await self.channel.close(grace=None)
        watches = list(self._watches.values())
        if self.pending:
            await asyncio.wait(watches, timeout=WATCH_CLOSE_TIMEOUT)
        for watch in watches:
            if watch.done() and not watch.cancelled():
                watch.exception()  # retrieved: a watch of a closing channel may end in a usage error
