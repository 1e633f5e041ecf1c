"""The command line: help, plugins, gateway, nodes and call against a real gateway, clear errors."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from easyremote_core.testing.processes import GatewayProcess, PythonProcess, free_port

pytestmark = pytest.mark.timeout(90)

NODE = """
import sys
from easyremote import ComputeNode
node = ComputeNode(sys.argv[1], "cli-node", heartbeat_interval=0.5, heartbeat_timeout=2)
@node.register
def add(a, b):
    return a + b
@node.register
def shout(text, times=1):
    return (text.upper() + "!") * times
def check_disk():
    raise RuntimeError("it broke")
@node.register
def fail():
    check_disk()
@node.register
def countdown(n):
    yield from range(n, 0, -1)
import logging; logging.basicConfig(level=logging.INFO)
node.serve()
"""


def easyremote(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "easyremote", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("command", [[], ["gateway"], ["nodes"], ["call"], ["plugins"], ["demo"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = easyremote(*command, "--help")
    assert result.returncode == 0 and "usage: easyremote" in result.stdout


def test_node_takes_the_policy_and_probes_by_name() -> None:
    result = easyremote("node", "--help")
    assert "--retry-policy" in result.stdout and "--health-probe" in result.stdout
    result = easyremote("node", "--gateway", "127.0.0.1:1", "--health-probe", "smoke-detector", "json")
    assert result.returncode == 1 and "no health probe named 'smoke-detector'" in result.stderr, result.stderr


def test_plugins_lists_every_kind_with_its_distribution() -> None:
    result = easyremote("plugins")
    assert result.returncode == 0
    for name in ("grpc", "tcp", "memory", "exponential", "full-jitter", "decorrelated-jitter", "constant",
                 "heartbeat", "grpc-channel-state", "least-loaded", "round-robin", "random"):
        lines = result.stdout.splitlines()
        assert any(line.split()[:1] == [name] and "easyremote 0.1.0" in line for line in lines), name


@pytest.fixture(scope="module")
def served_gateway():
    with GatewayProcess(args=("--startup-grace", "0")) as gateway:
        gateway.start()
        with PythonProcess(NODE, args=(gateway.address,), name="cli-node") as node:
            node.start()
            node.wait_for_line("Registered to VPS successfully", 30)
            yield gateway


def test_call_and_nodes_against_a_real_gateway(served_gateway) -> None:
    address = served_gateway.address
    result = easyremote("call", "--gateway", address, "add", "2", "40")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == 42
    result = easyremote("call", "--gateway", address, "shout", '"hey"', "--kwargs", '{"times": 2}')
    assert json.loads(result.stdout) == "HEY!HEY!"
    result = easyremote("nodes", "--gateway", address)
    assert result.returncode == 0 and "cli-node" in result.stdout and "add, countdown, fail, shout" in result.stdout


def test_call_of_a_generator_prints_its_items_one_per_line(served_gateway) -> None:
    result = easyremote("call", "countdown", "3", env={"EASYREMOTE_GATEWAY": served_gateway.address})
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [3, 2, 1]


def test_the_gateway_comes_from_the_environment_or_is_asked_for() -> None:
    result = easyremote("call", "add", "1", env={"EASYREMOTE_GATEWAY": ""})
    assert result.returncode == 2 and "--gateway is required (or set $EASYREMOTE_GATEWAY)" in result.stderr


def test_version() -> None:
    import easyremote

    result = subprocess.run([sys.executable, "-m", "easyremote", "--version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"easyremote {easyremote.__version__}"


def test_user_errors_are_clear_and_traceback_free(served_gateway) -> None:
    address = served_gateway.address
    result = easyremote("call", "--gateway", address, "add", "{not json")
    assert result.returncode == 1 and "argument 1 is not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
    result = easyremote("call", "--gateway", address, "fail")
    assert result.returncode == 4 and "fail raised RuntimeError: it broke" in result.stderr
    # The remote traceback shows the user's own frames, and none of EasyRemote's or anyio's.
    assert "in check_disk" in result.stderr and "in fail" in result.stderr, result.stderr
    assert "easyremote_core" not in result.stderr and "anyio" not in result.stderr, result.stderr
    result = easyremote("call", "--gateway", address, "missing")
    assert result.returncode == 1 and "NoNodeAvailableError" in result.stderr and "Traceback (most" not in result.stderr
    result = easyremote("call", "--gateway", "nowhere", "add")
    assert result.returncode == 1 and "must have the form 'host:port'" in result.stderr


@pytest.mark.parametrize("command", [["nodes"], ["call", "add", "1", "2"]])
def test_an_unreachable_gateway_fails_within_the_connect_timeout_with_one_line(command: list[str]) -> None:
    started = time.monotonic()
    result = easyremote(command[0], "--gateway", f"127.0.0.1:{free_port()}", "--connect-timeout", "1",
                        *command[1:])
    took = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert "gateway unavailable" in result.stderr and "within 1 s" in result.stderr
    assert took < 15, took  # the call's own --timeout (30 s) is not what it waits for


@pytest.mark.parametrize(("source", "says"), [
    ("def f(:\n    pass\n", "syntax error at"),
    ("import easyremote_no_such_module\ndef f():\n    pass\n", "No module named 'easyremote_no_such_module'"),
    ("raise RuntimeError('settings.toml is missing')\n", "it raised RuntimeError: settings.toml is missing"),
])
def test_a_node_file_that_cannot_load_gives_one_line_and_exit_1(tmp_path, source: str, says: str) -> None:
    path = tmp_path / "broken_node.py"
    path.write_text(source)
    result = easyremote("node", "--gateway", f"127.0.0.1:{free_port()}", str(path))
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert says in result.stderr and str(path) in result.stderr


def test_gateway_refuses_bad_settings() -> None:
    result = easyremote("gateway", "--port", "-5")
    assert result.returncode == 1 and "port (-5) must be at least 0" in result.stderr
    result = easyremote("gateway", "--transport", "smoke-signals", "--port", "0")
    assert result.returncode == 1 and "no transport named 'smoke-signals'" in result.stderr


def test_gateway_listens_on_two_transports_at_once() -> None:
    extra = free_port()
    with GatewayProcess(args=("--also-listen", f"tcp://127.0.0.1:{extra}")) as gateway:
        gateway.start()
        gateway.wait_for_line(f"EasyRemote gateway listening on 127.0.0.1:{extra} (transport tcp)", 10)
        with PythonProcess(NODE, args=(f"tcp://127.0.0.1:{extra}",), name="tcp-node") as node:
            node.start()
            node.wait_for_line("Registered to VPS successfully", 30)
            result = easyremote("call", "--gateway", f"grpc://{gateway.address}", "add", "1", "2")
            assert result.returncode == 0 and result.stdout.strip() == "3", result.stderr
            assert result.stderr == "", result.stderr  # a one-shot command prints its answer only
            verbose = easyremote("-v", "call", "--gateway", f"grpc://{gateway.address}", "add", "1", "2")
            assert "INFO" in verbose.stderr
        listening = [line for line in gateway.lines() if "EasyRemote gateway listening on" in line]
        assert len(listening) == 2, listening  # one line per address, none printed twice


def _new_token(*args: str) -> tuple[str, str]:
    """``easyremote token new ARGS``: the secret it printed and the TOML entry for the gateway."""
    result = easyremote("token", "new", *args)
    assert result.returncode == 0, result.stderr
    secret = result.stdout.splitlines()[0].removeprefix("secret: ")
    entry = result.stdout[result.stdout.index("[[credential]]"):]
    assert secret not in entry  # the file holds only the digest
    return secret, entry


def test_token_new_makes_credentials_a_gateway_enforces(tmp_path) -> None:
    node_secret, node_entry = _new_token("--role", "node", "--node-id", "cli-node", "--name", "gpu box")
    client_secret, client_entry = _new_token("--role", "client", "--function", "add")
    credentials = tmp_path / "credentials.toml"
    credentials.write_text(node_entry + "\n" + client_entry)
    with GatewayProcess(args=("--credentials", str(credentials))) as gateway:
        gateway.start()
        with PythonProcess(NODE, args=(gateway.address,), name="cli-node",
                           env={"EASYREMOTE_TOKEN": node_secret}) as node:
            node.start()
            node.wait_for_line("Registered to VPS successfully", 30)
            as_client = {"EASYREMOTE_GATEWAY": gateway.address, "EASYREMOTE_TOKEN": client_secret}
            result = easyremote("call", "add", "2", "3", env=as_client)
            assert result.returncode == 0 and result.stdout.strip() == "5", result.stderr
            # The client credential covers add only; the node's secret is not a client's.
            result = easyremote("call", "shout", '"x"', env=as_client)
            assert result.returncode == 5 and "shout" in result.stderr, result.stderr
            result = easyremote("call", "add", "2", "3", env={**as_client, "EASYREMOTE_TOKEN": "guess"})
            assert result.returncode == 5, result.stderr
        # The node credential is bound to the id cli-node: the same secret under another id is refused.
        impostor = NODE.replace('"cli-node"', '"other-node"')
        with PythonProcess(impostor, args=(gateway.address,), name="impostor",
                           env={"EASYREMOTE_TOKEN": node_secret}) as node:
            node.start()
            assert node.wait(30) != 0
            assert "other-node" in "\n".join(node.lines())


def test_token_new_refuses_a_node_id_for_a_client() -> None:
    result = easyremote("token", "new", "--role", "client", "--node-id", "x")
    assert result.returncode == 1 and "--node-id means nothing for role client" in result.stderr


def test_main_called_in_process_leaves_the_callers_logging_as_it_was(capsys) -> None:
    from easyremote._cli import main

    client_logs = logging.getLogger("easyremote.client")
    before = client_logs.level
    assert main(["token", "new", "--role", "client"]) == 0  # a one-shot command quiets its retries
    assert "secret:" in capsys.readouterr().out
    assert client_logs.level == before


FUNCTIONS = """
def add(a, b):
    return a + b

def charge(amount):
    return amount
"""


@pytest.mark.timeout(90)
def test_node_and_call_dial_a_tls_gateway_from_the_command_line(tmp_path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: str(tmp_path / name) for name in ("ca.pem", "gateway.pem", "gateway.key")}
    ca.cert_pem.write_to_path(paths["ca.pem"])
    cert.cert_chain_pems[0].write_to_path(paths["gateway.pem"])
    cert.private_key_pem.write_to_path(paths["gateway.key"])
    source = tmp_path / "functions.py"
    source.write_text(FUNCTIONS)
    tls = ("--tls-cert", paths["gateway.pem"], "--tls-key", paths["gateway.key"])
    with GatewayProcess(args=tls) as gateway:
        gateway.start()
        node = PythonProcess("import sys; from easyremote._cli import main; sys.exit(main(sys.argv[1:]))", args=(
            "node", "--gateway", gateway.address, "--tls-ca", paths["ca.pem"], "--idempotent", "add",
            "--heartbeat-interval", "0.5", "--heartbeat-timeout", "2", str(source)), name="tls-node")
        with node:
            node.start()
            node.wait_for_line("Registered to VPS successfully", 30)
            result = easyremote("call", "--gateway", gateway.address, "--tls-ca", paths["ca.pem"], "add", "2", "40")
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout) == 42
            plain = easyremote("call", "--gateway", gateway.address, "--connect-timeout", "2", "add", "1", "1")
            assert plain.returncode != 0 and "TLS" in plain.stderr  # a plain-text client is told why
            listed = easyremote("nodes", "--gateway", gateway.address, "--tls-ca", paths["ca.pem"])
            assert listed.returncode == 0 and "add, charge" in listed.stdout
    bad = easyremote("node", "--gateway", "127.0.0.1:1", "--idempotent", "nope", str(source))
    assert bad.returncode == 1 and "--idempotent nope" in bad.stderr  # a bad setting
