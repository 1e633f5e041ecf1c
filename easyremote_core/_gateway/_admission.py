"""Admission: the first frame of every connection, its deadline, and the rate of new sessions."""

from __future__ import annotations

import math
import random

import anyio

from .._config import HEARTBEAT_INTERVAL_RANGE, HEARTBEAT_TIMEOUT_RANGE
from .._errors import EasyRemoteError, ProtocolError
from .._protocol import decode, encode, pb
from .._slots import OldestOut
from .._transport import Connection

#: Spreads retries and checks; its own generator, so the program's ``random`` state is left alone.
_jitter = random.Random()


#: The longest node_id, function name or software string a peer may announce.
MAX_NAME = 200
#: A client's key: 128 random bits.
CLIENT_KEY_SIZE = 16


def valid_name(name: str) -> bool:
    """1 to ``MAX_NAME`` printable characters."""
    return 0 < len(name) <= MAX_NAME and name.isprintable()


def _bad(message: str, reason: pb.Reject.Reason = pb.Reject.REASON_BAD_REQUEST) -> pb.Reject:
    return pb.Reject(reason=reason, message=message)


class Admission:
    """Reads and checks each connection's hello, and spreads new sessions out (a token bucket).

    At most ``rate`` sessions start per second, with bursts of as many. A node told to
    wait keeps its turn: when it comes back at that time it is let in without taking
    another, so many nodes arriving together are spread out evenly instead of all
    retrying at once. Clients wait without a turn.
    """

    def __init__(self, *, handshake_timeout: float, rate: float, max_pending: int = 1000) -> None:
        self.handshake_timeout = handshake_timeout
        self.rate = rate
        self.max_pending = max_pending
        #: Connections waiting for their hello: past ``max_pending``, the oldest is closed to make room.
        self.pending = OldestOut(max_pending)
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
        """What is wrong with a hello, as a refusal; ``None`` when it is acceptable.

        Every value a peer announces must lie in a finite range: a heartbeat interval of
        ``inf`` would leave its link unwatched for ever.
        """
        if hello.role not in (pb.ROLE_NODE, pb.ROLE_CLIENT):
            return _bad("hello names no role (node or client)", pb.Reject.REASON_PROTOCOL)
        if hello.role == pb.ROLE_NODE and not valid_name(hello.node_id):
            return _bad(f"a node needs a node_id of 1-{MAX_NAME} printable characters")
        for field, (low, high) in (("heartbeat_interval", HEARTBEAT_INTERVAL_RANGE),
                                   ("heartbeat_timeout", HEARTBEAT_TIMEOUT_RANGE)):
            value = getattr(hello, field)
            if value != 0 and not (math.isfinite(value) and low <= value <= high):  # 0: not announced
                return _bad(f"{field} ({value:g}) must be between {low:g} and {high:g} seconds")
        if hello.role == pb.ROLE_CLIENT and len(hello.client_key) not in (0, CLIENT_KEY_SIZE):
            return _bad(f"client_key must be {CLIENT_KEY_SIZE} bytes, got {len(hello.client_key)}",
                        pb.Reject.REASON_PROTOCOL)
        if len(hello.software) > MAX_NAME:
            return _bad(f"software must be at most {MAX_NAME} characters")
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
        wait = (1 - self._tokens) / rate * _jitter.uniform(1.0, 1.2)
        if node_id:
            self._tokens -= 1  # the token of its turn
            if len(self._turns) > 4 * rate:
                self._turns = {key: at for key, at in self._turns.items() if at > now - 60}
            self._turns[node_id] = now + wait
        return wait


def role_of(hello: pb.Hello) -> str:
    """How logs name the peer of a hello."""
    return f"node {hello.node_id!r}" if hello.role == pb.ROLE_NODE else "client"


async def send_quietly(connection: Connection, envelope: pb.Envelope) -> None:
    """Send a refusal the peer may never read: at most 2 s, and a peer already gone is no error."""
    try:
        with anyio.move_on_after(2):
            await connection.send(encode(envelope))
    except EasyRemoteError:
        pass
