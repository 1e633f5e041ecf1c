"""The channel-state probe: a dialled gRPC link is dead once its channel leaves READY."""

from __future__ import annotations

import logging

import anyio
import grpc

from easyremote_core import HealthProbe, LinkDead, LinkHealth

from ._connection import GrpcAttribute

logger = logging.getLogger("easyremote.grpc")

_State = grpc.ChannelConnectivity


class GrpcChannelStateProbe(HealthProbe):
    """Declares the link dead on TRANSIENT_FAILURE or SHUTDOWN, or when the channel
    falls back from READY (a GOAWAY from a restarting gateway leaves it IDLE).

    Wakes on every state change and re-checks every ``health_check_interval``.
    On a link that is not a dialled gRPC link it has nothing to watch.
    """

    name = "grpc-channel-state"

    async def watch(self, link: LinkHealth) -> None:
        connection = link.connection
        channel = connection.extra(GrpcAttribute.channel_state, None)
        if channel is None:  # not a dialled gRPC link: nothing to watch
            await anyio.sleep_forever()
            return
        state = channel.get_state()
        was_ready = state is _State.READY
        while True:
            if state in (_State.TRANSIENT_FAILURE, _State.SHUTDOWN):
                raise LinkDead(f"gRPC channel state {state.name}")
            if was_ready and state is _State.IDLE:
                raise LinkDead("gRPC channel state fell back to IDLE after READY")
            if was_ready and state is _State.CONNECTING:
                raise LinkDead("gRPC channel state fell back to CONNECTING after READY")
            was_ready = was_ready or state is _State.READY
            with anyio.move_on_after(link.health_check_interval):
                await channel.wait_for_state_change(state)
            new_state = channel.get_state()
            if new_state is not state:
                logger.debug("gRPC channel to %s: %s -> %s", connection.peer, state.name, new_state.name)
            state = new_state
