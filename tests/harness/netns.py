"""A network namespace as a throwaway test host: its own loopback, its own iptables, deleted on exit.

Needs root, ``ip`` and ``iptables``; ``netns_available()`` says whether this machine has them.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Sequence
from types import TracebackType
from typing import Any

__all__ = ["NetNamespace", "iptables_command", "netns_available"]

_COMMAND_TIMEOUT = 30.0
# The nf_tables backend first (the distribution default), then legacy x_tables.
_IPTABLES_CANDIDATES = ("iptables", "iptables-nft", "iptables-legacy")


def _run(argv: Sequence[str], timeout: float = _COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


@functools.lru_cache(maxsize=1)
def iptables_command() -> str | None:
    """The first iptables binary that can add and delete a rule inside a fresh namespace, or ``None``."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return None
    candidates = [name for name in _IPTABLES_CANDIDATES if shutil.which(name)]
    if not candidates:
        return None
    name = f"er-test-probe-{secrets.token_hex(4)}"
    if _run(["ip", "netns", "add", name]).returncode != 0:
        return None
    try:
        rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", "9", "-j", "DROP"]
        for binary in candidates:
            command = ["ip", "netns", "exec", name, binary, "-w"]
            added = _run([*command, "-A", *rule]).returncode == 0
            if added and _run([*command, "-D", *rule]).returncode == 0:
                return binary
        return None
    finally:
        _run(["ip", "netns", "del", name])


def netns_available() -> bool:
    """True when we are root, have ``ip`` and ``iptables``, and can make and firewall a namespace."""
    return iptables_command() is not None


class NetNamespace:
    """``with NetNamespace() as ns:`` a fresh ``er-test-<random>`` namespace with ``lo`` up.

    On exit every process inside it is killed and the namespace deleted.
    """

    def __init__(self) -> None:
        self.name = f"er-test-{secrets.token_hex(4)}"
        self._rules: list[list[str]] = []
        self._children: list[subprocess.Popen[Any]] = []
        self._created = False

    @property
    def exec_prefix(self) -> list[str]:
        """Put before a command line to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def __enter__(self) -> NetNamespace:
        self._check(["ip", "netns", "add", self.name])
        self._created = True
        try:
            self.run("ip", "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def run(self, *argv: str, check: bool = True,
            timeout: float = _COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace to completion."""
        argv_in = [*self.exec_prefix, *argv]
        return self._check(argv_in, timeout) if check else _run(argv_in, timeout)

    def popen(self, *argv: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a long-running command inside the namespace (own process group); killed on exit."""
        kwargs.setdefault("start_new_session", True)
        child: subprocess.Popen[Any] = subprocess.Popen([*self.exec_prefix, *argv], **kwargs)
        self._children.append(child)
        return child

    def drop_port(self, port: int) -> None:
        """Silently drop TCP to and from ``port`` on the namespace's loopback, in INPUT and OUTPUT."""
        rules = [
            ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-j", "DROP"],
            ["INPUT", "-i", "lo", "-p", "tcp", "--sport", str(port), "-j", "DROP"],
            ["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", str(port), "-j", "DROP"],
            ["OUTPUT", "-o", "lo", "-p", "tcp", "--sport", str(port), "-j", "DROP"],
        ]
        for rule in rules:
            self._iptables("-A", rule)
            self._rules.append(rule)

    def restore(self) -> None:
        """Remove every rule ``drop_port`` added."""
        while self._rules:
            self._iptables("-D", self._rules.pop())

    def pids(self) -> list[int]:
        """The processes running inside the namespace."""
        listed = _run(["ip", "netns", "pids", self.name])
        return [int(pid) for pid in listed.stdout.split()]

    def close(self) -> None:
        """Kill everything inside the namespace and delete it."""
        if not self._created:
            return
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for child in self._children:
            if child.poll() is None:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            child.wait(_COMMAND_TIMEOUT)
        self._children.clear()
        self._rules.clear()
        self._check(["ip", "netns", "del", self.name])
        self._created = False

    def exists(self) -> bool:
        return self.name in _run(["ip", "netns", "list"]).stdout.split()

    def _iptables(self, action: str, rule: list[str]) -> None:
        binary = iptables_command()
        if binary is None:
            raise RuntimeError("no working iptables: install iptables and run as root")
        self.run(binary, "-w", action, *rule)

    @staticmethod
    def _check(argv: Sequence[str], timeout: float = _COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        done = _run(argv, timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
        return done
