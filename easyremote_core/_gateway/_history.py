"""What a gateway has served: node ids, their functions and labels, and when each was last seen.

It answers one question for the router: a call for a function no node serves right now,
should it wait for one (the function was served before: its nodes are on their way back
after a restart or a cut) or fail at once (nobody ever served it: a typo). It lives in
memory, and also in an SQLite file (WAL) when ``Gateway(state_file=...)`` names one, so
that it outlives the gateway's restarts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio
import anyio.to_thread

logger = logging.getLogger("easyremote.gateway")

#: Bounds of the history: most recently seen first kept. (A node's registration is bounded
#: by max_functions; these bound what many of them leave behind.)
MAX_NODES = 10_000
MAX_FUNCTIONS = 100_000
#: Entries not seen for this long are forgotten when the file is read.
MAX_AGE = 30 * 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    functions TEXT NOT NULL,   -- JSON list of names
    labels TEXT NOT NULL,      -- JSON object
    last_seen REAL NOT NULL,   -- seconds since the epoch
    left INTEGER NOT NULL DEFAULT 0  -- 1: it stopped in order, its calls answered
)
"""


_NO_LABELS: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class SeenNode:
    node_id: str
    functions: tuple[str, ...]
    labels: Mapping[str, str]
    last_seen: float
    left: bool = False  # it said goodbye and drained its calls: it holds none of this gateway's


class History:
    """The nodes and functions a gateway has served, most recently seen last."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.nodes: OrderedDict[str, SeenNode] = OrderedDict()
        self.functions: OrderedDict[str, float] = OrderedDict()  # name -> last seen
        self._unsaved: dict[str, SeenNode | None] = {}  # node_id -> its row, None: delete it
        self._wake = anyio.Event()
        self._db: sqlite3.Connection | None = None

    # -- questions ------------------------------------------------------------------------

    def served(self, function: str) -> bool:
        return function in self.functions

    def knows_node(self, node_id: str) -> bool:
        return node_id in self.nodes

    def may_hold(self, function: str) -> set[str]:
        """The nodes that served ``function`` and did not stop in order: any of them may be running a
        call of it that a lost gateway had passed on."""
        return {seen.node_id for seen in self.nodes.values() if not seen.left and function in seen.functions}

    # -- what happened --------------------------------------------------------------------

    def saw(self, node_id: str, functions: Sequence[str], labels: Mapping[str, str] | None = None, *,
            left: bool = False) -> None:
        """A node registered these functions, or is still serving them (at a loss or a stop), or
        ``left``: it stopped in order."""
        now = time.time()
        seen = SeenNode(node_id, tuple(functions), dict(labels) if labels else _NO_LABELS, now, left)
        self.nodes[node_id] = seen
        self.nodes.move_to_end(node_id)
        for name in seen.functions:
            self.functions[name] = now
            self.functions.move_to_end(name)
        saving = self.path is not None
        if saving:
            self._unsaved[node_id] = seen
        while len(self.nodes) > MAX_NODES:
            old, _ = self.nodes.popitem(last=False)
            if saving:
                self._unsaved[old] = None
        while len(self.functions) > MAX_FUNCTIONS:
            self.functions.popitem(last=False)
        if saving:
            self._wake.set()

    # -- the file -------------------------------------------------------------------------

    async def open(self) -> None:
        """Read the file (made if missing); a file that cannot be read is logged and set aside."""
        if self.path is None:
            return
        # Read here, before the gateway listens (a few ms for the most rows it keeps): a worker
        # thread's allocations at start leave the gateway ~4 KiB more per node it then serves.
        rows = self._open()
        cutoff = time.time() - MAX_AGE
        for node_id, functions, labels, last_seen, left in sorted(rows, key=lambda row: row[3])[-MAX_NODES:]:
            if not math.isfinite(last_seen) or last_seen < cutoff:
                continue
            try:
                names = tuple(str(name) for name in json.loads(functions))
                tags = {str(k): str(v) for k, v in json.loads(labels).items()}
            except (ValueError, TypeError, AttributeError):
                continue
            self.nodes[node_id] = SeenNode(node_id, names, tags, last_seen, bool(left))
            for name in names:
                if self.functions.get(name, -math.inf) < last_seen:
                    self.functions[name] = last_seen
        self.functions = OrderedDict(sorted(self.functions.items(), key=lambda item: item[1])[-MAX_FUNCTIONS:])
        logger.info("Gateway state %s: %d node(s) and %d function(s) served before", self.path,
                    len(self.nodes), len(self.functions))

    def _open(self) -> list[tuple[str, str, str, float, int]]:
        assert self.path is not None
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        try:
            db = self._connect()
            rows = db.execute("SELECT node_id, functions, labels, last_seen, left FROM nodes").fetchall()
        except sqlite3.DatabaseError as exc:
            aside = f"{self.path}.unreadable-{int(time.time())}"
            logger.error("Gateway state %s cannot be read (%s); moved aside to %s, starting afresh",
                         self.path, exc, aside)
            if self._db is not None:
                self._db.close()
            os.replace(self.path, aside)
            db = self._connect()
            rows = []
        return rows

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        db = self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA cache_size=-512")  # KiB: writes go in batches, nothing is read back
        db.execute("PRAGMA wal_autocheckpoint=16")
        db.execute(_SCHEMA)
        return db

    async def run(self) -> None:
        """Write what changed to the file, a batch at a time in a worker thread, until cancelled."""
        if self.path is None:
            return
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                await self._flush()
        finally:
            with anyio.CancelScope(shield=True):
                await self._flush()
                if self._db is not None:
                    await anyio.to_thread.run_sync(self._db.close)
                    self._db = None

    async def _flush(self) -> None:
        batch, self._unsaved = self._unsaved, {}
        if batch and self._db is not None:
            try:
                await anyio.to_thread.run_sync(self._write, batch)
            except sqlite3.Error as exc:
                logger.error("Could not write the gateway state to %s: %s", self.path, exc)

    def _write(self, batch: dict[str, SeenNode | None]) -> None:
        assert self._db is not None
        with self._db:
            self._db.execute("BEGIN")
            for node_id, seen in batch.items():
                if seen is None:
                    self._db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
                else:
                    self._db.execute(
                        "INSERT OR REPLACE INTO nodes (node_id, functions, labels, last_seen, left) "
                        "VALUES (?, ?, ?, ?, ?)", (node_id, json.dumps(list(seen.functions)),
                                                  json.dumps(dict(seen.labels)), seen.last_seen, int(seen.left)))
