"""What a node keeps of the calls it answered, for a caller that lost its gateway and asks again."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ._protocol import Attachment, pb

#: Bytes counted for each kept answer besides its frame: the call id, the record, the dict slot.
KEPT_OVERHEAD = 256


@dataclass(slots=True)
class Kept:
    owner: bytes
    envelope: pb.Envelope
    attachment: Attachment | None
    size: int
    until: float


class KeptAnswers:
    """The final answers of calls that must not run twice, each kept ``retention`` seconds, at
    most ``max_bytes`` in all (the oldest go first)."""

    def __init__(self, retention: float, max_bytes: int, now: Callable[[], float]) -> None:
        self.retention = retention
        self.max_bytes = max_bytes
        self.now = now
        self.bytes = 0
        self._kept: OrderedDict[str, Kept] = OrderedDict()  # oldest first
        #: When an answer last had to go before its time (past ``max_bytes``): until ``retention``
        #: after that, a call asked for again that is not here may have run.
        self._forgot_early_at = -math.inf

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, call_id: str, owner: bytes, envelope: pb.Envelope, attachment: Attachment | None) -> None:
        size = envelope.ByteSize() + (len(attachment) if attachment is not None else 0) + KEPT_OVERHEAD
        now = self.now()
        if call_id in self._kept:  # an answer replaces what was kept for the call before
            self._drop(call_id)
        self._kept[call_id] = Kept(owner, envelope, attachment, size, now + self.retention)
        self.bytes += size
        while self.bytes > self.max_bytes and self._kept:
            self._drop(next(iter(self._kept)))
            self._forgot_early_at = now
        self.trim()

    def get(self, call_id: str) -> Kept | None:
        kept = self._kept.get(call_id)
        if kept is not None and kept.until <= self.now():
            self._drop(call_id)
            return None
        return kept

    def trim(self) -> float | None:
        """Drop the answers whose time is up; when the next one's is, or ``None`` if none is left."""
        now = self.now()
        while self._kept:
            call_id = next(iter(self._kept))
            until = self._kept[call_id].until
            if until > now:
                return until
            self._drop(call_id)
        return None

    def forgot_recently(self) -> bool:
        """Whether an answer went before its time within the last ``retention`` seconds."""
        return self.now() - self._forgot_early_at < self.retention

    def clear(self) -> None:
        self._kept.clear()
        self.bytes = 0

    def _drop(self, call_id: str) -> None:
        self.bytes -= self._kept.pop(call_id).size
