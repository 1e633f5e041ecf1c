"""What the gateway knows about each connected peer and each call in flight: records, no behaviour."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio

from .._link import Link
from .._protocol import Attachment, pb
from ._identities import ANYONE, Credential


@dataclass(eq=False, slots=True)
class Peer:
    """One connected node or client."""

    link: Link
    peer: str
    calls: dict[str, Call] = field(default_factory=dict)
    credential: Credential = ANYONE
    #: Whose calls these are: a client's key (the same across its reconnects), else one of its own.
    key: bytes = b""
    #: Bytes of answers held for this client's calls since its link ended.
    held_bytes: int = 0
    #: Bytes of the requests of this client's calls the gateway keeps (until each is answered).
    call_bytes: int = 0
    #: Clients: who their calls belong to, at every gateway that gives their key the same credential
    #: (a digest of both; nodes compare it when a call is asked for again through another gateway).
    owner: bytes = b""


@dataclass(eq=False, slots=True)
class NodeSession(Peer):
    node_id: str = ""
    incarnation: bytes = b""  # the node's run: a new one does not know the calls of the last
    functions: dict[str, pb.FunctionSpec] = field(default_factory=dict)
    max_queue_size: int = 1000
    max_concurrency: int = 1
    labels: Mapping[str, str] = field(default_factory=dict)
    registered: bool = False
    lost_at: float | None = None
    connected_at: float = 0.0
    forget_timer: anyio.CancelScope | None = None  # running while the gateway waits for it to return
    leaving: str = ""  # why the node said goodbye; it gets no new calls and leaves once they are answered
    #: Calls failed as lost when this session ended: if the same run of the node comes back, it is
    #: told to stop them (they may still run there, and nobody waits for them any more).
    abandoned: list[str] | None = None

    @property
    def state(self) -> str:
        if self.lost_at is not None:
            return "reconnecting"
        if self.leaving:
            return "leaving"
        return "ready" if self.registered else "connecting"

    @property
    def in_flight(self) -> int:
        return len(self.calls)

    @property
    def ready(self) -> bool:
        return self.registered and self.lost_at is None and not self.leaving


@dataclass(eq=False, slots=True)
class Call:
    request: pb.CallRequest
    client: Peer | None
    node: NodeSession | None = None
    idempotent: bool = False
    asked_again: bool = False
    as_framed: bool = False  # the client's frame says it all (its owner is true): forward it as it came
    #: Asked again, non-idempotent, never seen here, no node named: the nodes asked whether they have it.
    probing: set[str] | None = None
    deliveries: int = 0
    started: float = 0.0
    attachment: Attachment | None = None  # the call's payload, when it travels apart from its envelope
    size: int = 0  # bytes of arguments: the payload inline or attached
    held: list[tuple[pb.Envelope, Attachment | None]] = field(default_factory=list)  # answers held while the
    held_bytes: int = 0  # their size                                                 client is away
    caller: Peer | None = None  # the client session that asked last, present or not
    owner: tuple[bytes, Credential] = (b"", ANYONE)  # the caller's key and credential
