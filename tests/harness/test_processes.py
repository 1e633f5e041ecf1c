"""Real subprocesses under real signals: output, SIGKILL, SIGSTOP/SIGCONT, SIGTERM, restart on one port."""

from __future__ import annotations

import importlib.util
import signal
import socket
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from easyremote_core.testing.processes import GatewayProcess, ProcessExitedError, PythonProcess, free_port

pytestmark = pytest.mark.timeout(60)

# A stand-in for `python -m easyremote gateway`: the gateway CLI is not written yet, so this script takes
# the same arguments, prints the same readiness line and answers TCP (an echo server) on that port.
STAND_IN_GATEWAY = textwrap.dedent('''
    import argparse, signal, socket, sys, threading

    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["gateway"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    options, _ = parser.parse_known_args()

    def on_sigterm(signum, frame):
        print("gateway shutting down", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    server = socket.create_server((options.host, options.port), reuse_port=False)
    print(f"EasyRemote gateway listening on {options.host}:{server.getsockname()[1]}", flush=True)

    def echo(conn):
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    while True:
        conn, _ = server.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()
''')


@pytest.fixture
def stand_in(tmp_path: Path) -> tuple[str, str]:
    script = tmp_path / "stand_in_gateway.py"
    script.write_text(STAND_IN_GATEWAY)
    return (sys.executable, str(script))


def echo_roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(payload)
        return conn.recv(len(payload))


def test_python_process_lines_stdin_and_log() -> None:
    code = textwrap.dedent('''
        import sys
        print("hello")
        for i in range(3):
            print("tick", i)
        print("ready", 42)
        line = sys.stdin.readline().strip()
        print("got", line, file=sys.stderr)
    ''')
    with PythonProcess(code) as proc:
        proc.start()
        assert proc.wait_for_line("ready") == "ready 42"
        assert proc.wait_for_line("tick", count=3) == "tick 2"
        proc.write_line("quit")
        assert proc.wait_for_line("got quit") == "got quit"
        assert proc.wait() == 0
        assert not proc.running
        assert proc.returncode == 0
        assert "hello" in proc.log_text() and "got quit" in proc.log_text()
        log_path = proc.log_path
    assert not log_path.exists(), "the temporary log is removed on close"


def test_early_exit_and_timeout_carry_the_log() -> None:
    with PythonProcess("print('about to fail'); raise SystemExit('boom')") as proc:
        proc.start()
        with pytest.raises(ProcessExitedError, match="(?s)code 1.*about to fail.*boom"):
            proc.wait_for_line("never printed")
    with PythonProcess("import sys; print('silent from now on'); sys.stdin.read()") as proc:
        proc.start()
        with pytest.raises(TimeoutError, match="silent from now on"):
            proc.wait_for_line("never printed", timeout=0.3)


def test_sigkill() -> None:
    with PythonProcess("import sys; print('up'); sys.stdin.read()") as proc:
        proc.start()
        proc.wait_for_line("up")
        pid = proc.pid
        assert proc.kill() == -signal.SIGKILL
        assert not proc.running
        assert not psutil.pid_exists(pid)


def test_stopped_gateway_keeps_its_socket_but_does_not_answer(stand_in: tuple[str, str]) -> None:
    with GatewayProcess(launcher=stand_in) as gateway:
        gateway.start()
        assert gateway.address == f"127.0.0.1:{gateway.port}"
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as conn:
            conn.sendall(b"one")
            assert conn.recv(3) == b"one"

            gateway.stop()
            assert psutil.Process(gateway.pid).status() == psutil.STATUS_STOPPED
            listening = [c for c in psutil.Process(gateway.pid).net_connections("tcp")
                         if c.status == psutil.CONN_LISTEN and c.laddr.port == gateway.port]
            assert listening, "a stopped process still holds its listening socket"
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=5):
                pass  # the kernel still completes the handshake: the socket is open
            conn.sendall(b"two")  # the link stays open...
            conn.settimeout(1)
            with pytest.raises(socket.timeout):  # ...but nothing answers
                conn.recv(3)

            gateway.cont()
            conn.settimeout(5)
            assert conn.recv(3) == b"two"  # the answer was only late


def test_restart_on_the_same_port(stand_in: tuple[str, str]) -> None:
    with GatewayProcess(launcher=stand_in) as gateway:
        gateway.start()
        port, first_pid = gateway.port, gateway.pid
        assert echo_roundtrip(port) == b"ping"
        assert gateway.kill() == -signal.SIGKILL
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        gateway.restart()
        assert gateway.port == port and gateway.pid != first_pid
        assert echo_roundtrip(port) == b"ping"
        gateway.restart()  # restart() of a running gateway kills it first
        assert echo_roundtrip(port) == b"ping"
        assert gateway.log_text().count(gateway.ready_line) == 3


def test_explicit_port_and_terminate(stand_in: tuple[str, str]) -> None:
    port = free_port()
    with GatewayProcess(port, launcher=stand_in) as gateway:
        gateway.start()
        assert gateway.port == port
        gateway.stop()
        assert gateway.terminate() == 0  # SIGTERM reaches a stopped gateway too: it is continued
        assert "gateway shutting down" in gateway.log_text()


def test_gateway_start_failures_raise_with_the_log(tmp_path: Path) -> None:
    crashing = tmp_path / "crashing.py"
    crashing.write_text("print('bad flag'); raise SystemExit(2)")
    with GatewayProcess(launcher=(sys.executable, str(crashing))) as gateway:
        with pytest.raises(ProcessExitedError, match="(?s)code 2.*bad flag"):
            gateway.start()
    mute = tmp_path / "mute.py"
    mute.write_text("import time; time.sleep(60)")
    with GatewayProcess(launcher=(sys.executable, str(mute)), startup_timeout=0.5) as gateway:
        with pytest.raises(TimeoutError, match="did not print"):
            gateway.start()
        assert not gateway.running, "a gateway that never got ready is killed"


def test_cleanup_kills_the_whole_group_even_when_stopped() -> None:
    code = textwrap.dedent('''
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("child", child.pid, flush=True)
        sys.stdin.read()
    ''')
    with PythonProcess(code) as proc:
        proc.start()
        child_pid = int(proc.wait_for_line("child").split()[1])
        pid = proc.pid
        child = psutil.Process(child_pid)
        proc.stop()
    assert not psutil.pid_exists(pid)
    child.wait(10)  # SIGKILLed as part of the group (reaped by init)
    assert not child.is_running()


@pytest.mark.skipif(importlib.util.find_spec("easyremote.__main__") is None,
                    reason="the gateway CLI (python -m easyremote gateway) is not written yet")
def test_real_gateway_cli_starts_and_restarts() -> None:
    with GatewayProcess() as gateway:
        gateway.start()
        port = gateway.port
        gateway.kill()
        gateway.restart()
        assert gateway.port == port
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
