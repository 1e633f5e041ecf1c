"""Readable log lines for people who configured no logging: ``serve()`` shows EasyRemote's INFO lines."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
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
            handler = logging.StreamHandler(sys.stderr)
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
