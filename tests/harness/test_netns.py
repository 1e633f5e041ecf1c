"""A network namespace as a test host: real iptables drops turn a loopback TCP link half-open."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

from easyremote_core.testing.processes import PythonProcess

from .netns import NetNamespace, iptables_command, netns_available

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not netns_available(), reason="needs root, ip, iptables and network namespaces"),
]

ECHO_SERVER = textwrap.dedent('''
    import socket, threading
    server = socket.create_server(("127.0.0.1", 0))
    print("port", server.getsockname()[1], flush=True)

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

# Driven line by line on stdin: "send TEXT" on the first connection, "new TEXT" on a fresh one.
ECHO_CLIENT = textwrap.dedent('''
    import socket, sys
    port = int(sys.argv[1])

    def exchange(conn, text):
        conn.sendall(text.encode())
        conn.settimeout(1.0)
        try:
            print("echo", conn.recv(100).decode(), flush=True)
        except socket.timeout:
            error = conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            print(f"timeout open={conn.fileno() != -1} so_error={error}", flush=True)

    first = socket.create_connection(("127.0.0.1", port), timeout=5)
    print("connected", flush=True)
    for line in sys.stdin:
        command, text = line.split()
        if command == "send":
            exchange(first, text)
        else:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as fresh:
                exchange(fresh, text)
''')


def test_dropping_a_port_makes_the_link_half_open() -> None:
    with NetNamespace() as ns:
        with PythonProcess(ECHO_SERVER, prefix=ns.exec_prefix, name="echo-server") as server:
            server.start()
            port = int(server.wait_for_line("port").split()[1])
            client = PythonProcess(ECHO_CLIENT, args=[str(port)], prefix=ns.exec_prefix, name="echo-client")
            with client:
                client.start()
                client.wait_for_line("connected")
                client.write_line("send one")
                assert client.wait_for_line("echo one") == "echo one"

                ns.drop_port(port)
                client.write_line("send two")
                # Half-open: no echo within the 1 s deadline, yet the socket is open and has no error.
                assert client.wait_for_line("timeout") == "timeout open=True so_error=0"

                ns.restore()
                client.write_line("new three")
                assert client.wait_for_line("echo three") == "echo three"
            assert sorted(ns.pids()) == [server.pid]
        name = ns.name
        assert ns.exists()
    assert not ns.exists()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert name not in listed


def test_exit_kills_what_runs_inside_and_the_host_loopback_is_out_of_reach() -> None:
    with socket.create_server(("127.0.0.1", 0)) as host_listener:
        host_port = host_listener.getsockname()[1]
        with NetNamespace() as ns:
            probe = ns.run(sys.executable, "-c",
                           f"import socket; socket.create_connection(('127.0.0.1', {host_port}), timeout=5)",
                           check=False)
            assert probe.returncode != 0 and "ConnectionRefusedError" in probe.stderr
            sleeper = ns.popen(sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)",
                               stdout=subprocess.PIPE)
            assert sleeper.stdout is not None
            assert sleeper.stdout.readline() == b"up\n"  # it runs inside now
            assert sleeper.pid in ns.pids()
        assert sleeper.wait(10) == -9
        sleeper.stdout.close()
        assert not ns.exists()


def test_a_working_iptables_backend_is_chosen() -> None:
    assert iptables_command() in ("iptables", "iptables-nft", "iptables-legacy")
