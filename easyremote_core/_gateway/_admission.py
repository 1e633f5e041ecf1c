"""Admission: the first frame of every connection, its deadline, and the rate of new sessions."""

from __future__ import annotations

import random

import anyio

from .._errors import ProtocolError
from .._protocol import decode, pb
from .._transport import Connection


class Admission:
    """Reads and checks each connection's hello, and spreads new sessions out (a token bucket).

    At most ``rate`` sessions start per second, with bursts of as many. A node told to
    wait keeps its turn: when it comes back at that time it is let in without taking
    another, so many nodes arriving together are spread out evenly instead of all
    retrying at once. Clients wait without a turn.
    """

    def __init__(self, *, handshake_timeout: float, rate: float) -> None:
        self.handshake_timeout = handshake_timeout
        self.rate = rate
        self._tokens = rate  # a full bucket: a burst of this many at once
        self._at = 0.0
        self._turns: dict[str, float] = {}  # node_id -> when a node told to wait may come in

    def start(self) -> None:
        self._at = anyio.current_time()

    async def receive_hello(self, connection: Connection) -> pb.Hello:
        """The peer's hello; ``TimeoutError`` after ``handshake_timeout``, ``ProtocolError`` for another frame."""
        with anyio.fail_after(self.handshake_timeout):
            envelope = decode(await connection.receive())
        if envelope.WhichOneof("body") != "hello":
            raise ProtocolError(f"expected a hello frame first, got {envelope.WhichOneof('body')!r}")
        return envelope.hello

    def check(self, hello: pb.Hello) -> pb.Reject | None:
        """What is wrong with a hello, as a refusal; ``None`` when it is acceptable."""
        if hello.role not in (pb.ROLE_NODE, pb.ROLE_CLIENT):
            return pb.Reject(reason=pb.Reject.REASON_PROTOCOL, message="hello names no role (node or client)")
        if hello.role == pb.ROLE_NODE and (not hello.node_id or len(hello.node_id) > 200):
            return pb.Reject(reason=pb.Reject.REASON_BAD_REQUEST, message="a node needs a node_id of 1-200 characters")
        return None

    def wait(self, node_id: str) -> float:
        """0 when a new session may start now, else seconds until its turn."""
        now = anyio.current_time()
        turn = self._turns.pop(node_id, None) if node_id else None
        if turn is not None:
            if now >= turn - 0.05:
                return 0.0
            self._turns[node_id] = turn
            return turn - now
        rate = self.rate
        self._tokens = min(rate, self._tokens + (now - self._at) * rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        wait = (1 - self._tokens) / rate * random.uniform(1.0, 1.2)
        if node_id:
            self._tokens -= 1  # the token of its turn
            if len(self._turns) > 4 * rate:
                self._turns = {key: at for key, at in self._turns.items() if at > now - 60}
            self._turns[node_id] = now + wait
        return wait
