"""Real processes for fault tests and benchmarks: a gateway or a script, killed and frozen by real signals.

The API is synchronous so that sync tests and benchmarks can use it; every wait is bounded.
"""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = ["GatewayProcess", "ManagedProcess", "ProcessExitedError", "PythonProcess", "free_port"]

_EXIT_WAIT = 10.0


class ProcessExitedError(RuntimeError):
    """The process exited while something was waiting for it to print a line."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing is bound to right now, below the kernel's ephemeral range.

    Ports the kernel picks for ``bind(0)`` are also the ones it gives outgoing connections and
    other processes asking for a free port: a gateway killed and restarted on such a port can
    find it taken in between, by another test's gateway or by some client's source port. Ports
    below the range are only ever taken by someone asking for that very port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low = _ephemeral_low()
    for _ in range(200):
        port = _random.randrange(10_000, low)
        if port in _handed_out:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(family, socket.SOCK_STREAM) as sock:  # a crowded machine: any port will do
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


_random = random.Random()
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32_768
    return max(low, 12_000)


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ManagedProcess:
    """A subprocess in its own process group, its output copied line by line to a log file.

    A reader thread drains the output pipe, so that a chatty process never blocks on a full
    pipe, and wakes whoever waits for a line; it is joined when the process is reaped.
    """

    def __init__(self, env: Mapping[str, str] | None = None, *, prefix: Sequence[str] = (),
                 log_path: str | os.PathLike[str] | None = None, cwd: str | os.PathLike[str] | None = None,
                 name: str = "process") -> None:
        self.env = dict(env or {})
        self.prefix = tuple(prefix)
        self.cwd = cwd
        self.name = name
        self._own_log = log_path is None
        if log_path is None:
            fd, path = tempfile.mkstemp(prefix=f"easyremote-{name}-", suffix=".log")
            os.close(fd)
            log_path = path
        self.log_path = Path(log_path)
        self._popen: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._pidfd: int | None = None
        self._lines: list[str] = []  # lines of the current run
        self._output_done = False
        self._changed = threading.Condition()
        self._runs = 0

    def argv(self) -> list[str]:
        """The command line of one run, without the prefix."""
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ManagedProcess:
        """Start the process (not waiting for anything it prints)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._reap()
        self._runs += 1
        with self._changed:
            self._lines = []
            self._output_done = False
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        argv = [*self.prefix, *self.argv()]
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"--- run {self._runs}: {' '.join(argv)}\n")
        self._popen = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            # Its own process group, so that signals reach its children too.
            env=env, cwd=self.cwd, start_new_session=True,
        )
        assert self._popen.stdout is not None
        self._pidfd = os.pidfd_open(self._popen.pid) if hasattr(os, "pidfd_open") else None
        self._reader = threading.Thread(target=self._copy_output, args=(self._popen.stdout,),
                                        name=f"easyremote-{self.name}-output", daemon=True)
        self._reader.start()
        return self

    def close(self) -> None:
        """Kill whatever is left of the process group (stopped or not) and release everything."""
        if self._popen is not None:
            self._signal(signal.SIGKILL)
            self._exited(_EXIT_WAIT)
            self._reap()
        if self._own_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- signals -----------------------------------------------------------------------------

    def kill(self, timeout: float = _EXIT_WAIT) -> int:
        """SIGKILL the process group and wait for the exit; returns the exit code (``-9``)."""
        self._signal(signal.SIGKILL)
        return self.wait(timeout)

    def terminate(self, timeout: float = _EXIT_WAIT) -> int:
        """SIGTERM the process group (continuing it if stopped) and wait for the exit.

        If it has not exited within ``timeout`` it is killed and ``TimeoutError`` raised.
        """
        self._signal(signal.SIGTERM)
        self._signal(signal.SIGCONT)
        try:
            return self.wait(timeout)
        except TimeoutError:
            self.kill()
            raise

    def stop(self) -> None:
        """SIGSTOP the process group; on return it is stopped: its sockets stay open, nothing answers."""
        popen = self._require_started()
        self._signal(signal.SIGSTOP)
        if popen.returncode is None:
            # SIGSTOP cannot be caught or ignored, so this returns at once; WNOWAIT leaves the state in place.
            os.waitid(os.P_PID, popen.pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT)

    def cont(self) -> None:
        """SIGCONT the process group."""
        self._signal(signal.SIGCONT)

    def wait(self, timeout: float = _EXIT_WAIT) -> int:
        """Wait for the process to exit; returns its exit code (negative: killed by that signal).

        Whatever else is left in its process group is killed as the process is reaped.
        """
        popen = self._require_started()
        if not self._exited(timeout):
            raise TimeoutError(f"{self.name} (pid {popen.pid}) did not exit within {timeout} s")
        self._reap()
        assert popen.returncode is not None
        return popen.returncode

    def _signal(self, signum: signal.Signals) -> None:
        popen = self._require_started()
        if popen.returncode is not None:
            return  # reaped: its pid, the group id, may belong to someone else now
        try:
            os.killpg(popen.pid, signum)  # the group id is the pid: start_new_session=True
        except ProcessLookupError:  # the whole group is gone already
            pass

    def _exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the process to exit, without reaping it, so its group id stays ours."""
        popen = self._require_started()
        if popen.returncode is not None:
            return True
        if self._pidfd is None:  # no pidfd on this platform: reap while waiting
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        readable, _, _ = select.select([self._pidfd], [], [], max(timeout, 0.0))
        return bool(readable)

    # -- state -------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._require_started().pid

    @property
    def running(self) -> bool:
        return self._popen is not None and not self._exited(0)

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited, else ``None``."""
        if self._popen is None or not self._exited(0):
            return None
        self._reap()
        return self._popen.returncode

    # -- output ------------------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything every run has printed so far (stdout and stderr, interleaved)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def lines(self) -> list[str]:
        """The lines the current run has printed so far."""
        with self._changed:
            return list(self._lines)

    def wait_for_line(self, text: str, timeout: float = 10.0, *, count: int = 1) -> str:
        """Wait until the current run has printed ``count`` lines containing ``text``; return the last one.

        Raises ``TimeoutError`` after ``timeout`` seconds, ``ProcessExitedError`` if the output ends
        first; both carry the log.
        """
        self._require_started()
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [line for line in self._lines if text in line]
                if len(found) >= count:
                    return found[count - 1]
                remaining = deadline - time.monotonic()
                if self._output_done or remaining <= 0:
                    break
                self._changed.wait(remaining)
        if not self._output_done:
            raise TimeoutError(f"{self.name} did not print {text!r} within {timeout} s\n{self._log_tail()}")
        code = self.wait() if self._exited(_EXIT_WAIT) else "unknown"
        raise ProcessExitedError(
            f"{self.name} exited (code {code}) before printing {text!r}\n{self._log_tail()}")

    def write_line(self, text: str) -> None:
        """Write one line to the process's stdin."""
        popen = self._require_started()
        assert popen.stdin is not None
        popen.stdin.write(text.encode() + b"\n")
        popen.stdin.flush()

    # -- internals ---------------------------------------------------------------------------

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self._popen

    def _log_tail(self, lines: int = 60) -> str:
        text = self.log_text().splitlines()[-lines:]
        return "--- log of " + self.name + " ---\n" + "\n".join(text)

    def _copy_output(self, pipe: IO[bytes]) -> None:
        with self.log_path.open("a", encoding="utf-8") as log:
            for raw in pipe:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                log.write(line + "\n")
                log.flush()
                with self._changed:
                    self._lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._output_done = True
            self._changed.notify_all()

    def _reap(self) -> None:
        """Once the process has exited: kill what is left of its group, reap it, finish copying its output."""
        popen = self._popen
        if popen is None or not self._exited(0):
            return
        if popen.returncode is None:
            self._signal(signal.SIGKILL)
            popen.wait()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._reader is not None:
            # Output ends when the last holder of the pipe exits; a child that escaped the group is killed.
            self._reader.join(_EXIT_WAIT)
            if self._reader.is_alive():
                raise TimeoutError(f"output of {self.name} did not end: a process outside its group holds it")
            self._reader = None
        for stream in (popen.stdin, popen.stdout):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except BrokenPipeError:
                    pass


class PythonProcess(ManagedProcess):
    """``python -c CODE`` as a managed subprocess: a node or client script for a fault test.

    ``env`` is laid over the current environment.
    """

    def __init__(self, code: str, env: Mapping[str, str] | None = None, *, args: Sequence[str] = (),
                 prefix: Sequence[str] = (), log_path: str | os.PathLike[str] | None = None,
                 cwd: str | os.PathLike[str] | None = None, name: str = "python") -> None:
        super().__init__(env, prefix=prefix, log_path=log_path, cwd=cwd, name=name)
        self.code = code
        self.args = tuple(args)

    def argv(self) -> list[str]:
        return [sys.executable, "-u", "-c", self.code, *self.args]

    def __enter__(self) -> PythonProcess:
        return self


class GatewayProcess(ManagedProcess):
    """``python -m easyremote gateway`` as a managed subprocess on a fixed loopback port.

    Port 0 picks a free port once, so that ``restart()`` comes back on the same port. ``start()``
    returns once the gateway has printed ``EasyRemote gateway listening on HOST:PORT``. Unless
    ``args`` say otherwise, it keeps its state file in a directory of its own (removed by
    ``close()``), as the CLI gateway does in the user's state directory: a restart reads it.
    """

    READY_LINE = "EasyRemote gateway listening on"

    def __init__(self, port: int = 0, host: str = "127.0.0.1", args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, *,
                 launcher: Sequence[str] = (sys.executable, "-m", "easyremote"),
                 prefix: Sequence[str] = (), log_path: str | os.PathLike[str] | None = None,
                 cwd: str | os.PathLike[str] | None = None, startup_timeout: float = 20.0) -> None:
        super().__init__(env, prefix=prefix, log_path=log_path, cwd=cwd, name="gateway")
        self.host = host
        self.port = port or free_port(host)
        self.args = tuple(args)
        self._state_dir: tempfile.TemporaryDirectory[str] | None = None
        if not {"--state-file", "--no-state-file"} & set(self.args):
            self._state_dir = tempfile.TemporaryDirectory(prefix="easyremote-gateway-")
            self.state_file = os.path.join(self._state_dir.name, f"gateway-{self.port}.sqlite3")
            self.args += ("--state-file", self.state_file)
        self.launcher = tuple(launcher)
        self.startup_timeout = startup_timeout

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._state_dir is not None:
                self._state_dir.cleanup()

    @property
    def address(self) -> str:
        return _format_address(self.host, self.port)

    @property
    def ready_line(self) -> str:
        """What the gateway prints once it listens: ``HOST:PORT`` as given, no brackets even for IPv6."""
        return f"{self.READY_LINE} {self.host}:{self.port}"

    def argv(self) -> list[str]:
        return [*self.launcher, "gateway", "--host", self.host, "--port", str(self.port), *self.args]

    def start(self, timeout: float | None = None) -> GatewayProcess:
        """Start the gateway and wait until it listens; on timeout or early exit kill it and raise."""
        super().start()
        try:
            self.wait_for_line(self.ready_line, self.startup_timeout if timeout is None else timeout)
        except (TimeoutError, ProcessExitedError):
            self.kill()
            raise
        return self

    def restart(self, timeout: float | None = None) -> GatewayProcess:
        """Kill the gateway if it still runs, then start it again on the same port."""
        if self._popen is not None:
            self.kill()
        return self.start(timeout)

    def __enter__(self) -> GatewayProcess:
        return self
