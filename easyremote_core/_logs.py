"""Readable log lines for people who configured no logging: ``serve()`` shows EasyRemote's INFO lines."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_lock = threading.Lock()
_users = 0
_installed: tuple[logging.Handler, int] | None = None  # (handler, the logger's level before)


@contextmanager
def console_logging() -> Iterator[None]:
    """While it is held, INFO lines of the ``easyremote`` logger go to stderr, as a web server's do.

    Only when the program configured no logging of its own (no handler on the root or the
    ``easyremote`` logger, no level set on it); otherwise the program keeps full control.
    Several holders (a gateway and a node served in threads) share one handler.
    """
    global _users, _installed
    with _lock:
        _users += 1
        if _users == 1 and _configures_nothing():
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(FORMAT))
            target = logging.getLogger("easyremote")
            _installed = (handler, target.level)
            target.addHandler(handler)
            target.setLevel(logging.INFO)
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _installed is not None:
                handler, level = _installed
                _installed = None
                target = logging.getLogger("easyremote")
                target.removeHandler(handler)
                target.setLevel(level)


def _configures_nothing() -> bool:
    target = logging.getLogger("easyremote")
    return not logging.getLogger().handlers and not target.handlers and target.level == logging.NOTSET


#: No log line is longer than this; a longer message is cut, saying how long it was.
MAX_LINE = 2048
#: Refusals of one kind from one host are logged once per this many seconds, with a count.
QUIET_PERIOD = 10.0


class LineCap(logging.Filter):
    """Cuts a message longer than ``MAX_LINE`` characters (a peer chooses much of what is logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > MAX_LINE:
            record.msg = f"{message[:MAX_LINE - 40]}... [{len(message)} characters]"
            record.args = None
        return True


_CAP = LineCap()


def capped(logger: logging.Logger) -> logging.Logger:
    """``logger`` with its lines capped at ``MAX_LINE`` characters."""
    if _CAP not in logger.filters:
        logger.addFilter(_CAP)
    return logger


class Quieter:
    """Logs what peers cause at most once per host and reason per ``QUIET_PERIOD`` seconds.

    The first occurrence is logged; those that follow within the period are counted, and
    the next line logged for that host and reason says how many there were. At most
    ``max_keys`` hosts and reasons are remembered.
    """

    def __init__(self, logger: logging.Logger, period: float = QUIET_PERIOD, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.period = period
        self.max_keys = max_keys
        self._clock = clock
        self._seen: dict[tuple[str, str], list[float | int]] = {}  # key -> [logged at, suppressed since]

    def log(self, level: int, peer: str, reason: str, message: str, *args: object) -> None:
        now = self._clock()
        key = (host_of(peer), reason)
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.period:
            entry[1] += 1
            return
        suppressed = int(entry[1]) if entry is not None else 0
        if entry is None and len(self._seen) >= self.max_keys:
            self._forget_old(now)
        self._seen[key] = [now, 0]
        if suppressed:
            message += f" (and {suppressed} more like it from {key[0]} in the last {self.period:g} s)"
        self.logger.log(level, message, *args)

    def _forget_old(self, now: float) -> None:
        self._seen = {key: entry for key, entry in self._seen.items() if now - entry[0] < self.period}
        while len(self._seen) >= self.max_keys:  # all recent: forget the oldest
            self._seen.pop(next(iter(self._seen)))


def host_of(peer: str) -> str:
    """``127.0.0.1:5000`` -> ``127.0.0.1``; ``[::1]:5000`` -> ``::1``; anything else as it is."""
    host, colon, port = peer.rpartition(":")
    if not colon or not port.isdigit():
        return peer
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host
