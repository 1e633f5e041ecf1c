"""docs/deploying.md and deploy/: the manifests hold together, their commands parse, the topology runs."""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from easyremote import Client
from easyremote._cli import _parser, main
from easyremote_core.testing.processes import GatewayProcess, PythonProcess

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

yaml = pytest.importorskip("yaml")

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOC = ROOT / "docs" / "deploying.md"
COMPOSE = DEPLOY / "docker-compose.yml"
KUBERNETES = DEPLOY / "kubernetes"


# -- reading the files ------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def manifests() -> list[dict[str, Any]]:
    documents = [doc for path in sorted(KUBERNETES.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]
    return [doc for doc in documents if doc]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"one {kind} {name} in deploy/kubernetes/, found {len(found)}"
    return found[0]


def option(argv: list[str], flag: str) -> str:
    """The value of ``flag`` in a command line (its last occurrence, as argparse takes it)."""
    values = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == flag]
    assert values, f"{flag} missing from {argv}"
    return values[-1]


def parse(argv: list[str]) -> argparse.Namespace:
    """``argv`` (starting with ``easyremote``) parsed by the CLI's own parser; a usage error fails."""
    assert argv[0] == "easyremote", argv
    try:
        return _parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"easyremote's parser refuses {shlex.join(argv)} (exit {exc.code})")


def gateway_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s.get("command", [None, None])[:2] == ["easyremote", "gateway"]}


def node_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s.get("command", [None, None])[:2] == ["easyremote", "node"]}


def manifest_containers() -> list[dict[str, Any]]:
    return [c for doc in manifests() if doc["kind"] in ("Deployment", "StatefulSet")
            for c in doc["spec"]["template"]["spec"]["containers"]]


_SHELL_BLOCK = re.compile(r"^[ \t]*```(?:bash|sh|shell|console)\n(.*?)^[ \t]*```", re.M | re.S)


def doc_commands() -> list[list[str]]:
    """Every command in the doc's shell blocks that runs ``easyremote``, from that word on."""
    commands = []
    for block in _SHELL_BLOCK.findall(DOC.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if not line or line.startswith("#"):
                continue
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            words = list(lexer)
            end = next((i for i, w in enumerate(words) if set(w) <= set("|&;<>()")), len(words))
            words = words[:end]
            if "easyremote" in words:
                commands.append(words[words.index("easyremote"):])
    return commands


# -- the checker itself -----------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_a_made_up_flag_is_refused() -> None:
    parse(["easyremote", "gateway", "--port", "8080", "--state-file", "x.sqlite3"])
    for wrong in (["easyremote", "gateway", "--replicas", "2"], ["easyremote", "node", "--gateway", "a:1"],
                  ["easyremote", "gateway", "--port", "eighty"]):
        with pytest.raises(pytest.fail.Exception):
            parse(wrong)


# -- docker-compose.yml -----------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_compose_has_two_gateways_with_a_volume_each_and_a_node_on_both() -> None:
    document = compose()
    services = document["services"]
    gateways = gateway_services(services)
    nodes = node_services(services)
    assert len(gateways) == 2 and len(nodes) == 1, sorted(services)
    for service in services.values():
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    published = set()
    volumes = set()
    for name, service in gateways.items():
        command = service["command"]
        port = int(option(command, "--port"))
        host_ports = {int(p.split(":")[0]) for p in service["ports"] if int(p.split(":")[1]) == port}
        assert len(host_ports) == 1, f"{name} publishes its --port {port}: {service['ports']}"
        published |= host_ports
        state_dir = str(pathlib.PurePosixPath(option(command, "--state-file")).parent)
        mounted = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert state_dir in mounted, f"{name}: no volume at its state file's directory {state_dir}"
        assert mounted[state_dir] in document["volumes"], f"{name}: {mounted[state_dir]} is not a named volume"
        volumes.add(mounted[state_dir])
        assert "--credentials" in command and service["secrets"] == ["credentials"]
        assert option(command, "--credentials") == "/run/secrets/credentials"
    assert len(published) == 2 and len(volumes) == 2, "each gateway its own host port and its own volume"
    (node,) = nodes.values()
    dialled = option(node["command"], "--gateway").split(",")
    assert sorted(dialled) == sorted(f"{name}:{option(s['command'], '--port')}" for name, s in gateways.items())
    assert "EASYREMOTE_TOKEN" in node["environment"]
    assert (DEPLOY / node["command"][-1]).is_file(), "the node serves a file the image copies from deploy/"


@pytest.mark.timeout(30)
def test_the_image_installs_the_project_and_the_functions_the_node_serves() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install .*/src", dockerfile, re.M)
    workdir = re.findall(r"^WORKDIR (\S+)", dockerfile, re.M)[-1]
    (node,) = node_services(compose()["services"]).values()
    served = node["command"][-1]
    assert re.search(rf"^COPY deploy/{served} {workdir}/{served}$", dockerfile, re.M)
    for container in manifest_containers():
        if container["command"][:2] == ["easyremote", "node"]:
            assert container["command"][-1] == served


# -- kubernetes/ ------------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_the_headless_service_selects_the_gateways_and_the_nodes_dial_it() -> None:
    headless = [doc for doc in manifests() if doc["kind"] == "Service" and doc["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1, "one headless Service (clusterIP: None) for the gateways"
    service = headless[0]
    gateways = one("StatefulSet", "easyremote-gateway")
    assert gateways["spec"]["replicas"] == 2
    assert gateways["spec"]["serviceName"] == service["metadata"]["name"]
    pod = gateways["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert gateways["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    command = container["command"]
    port = int(option(command, "--port"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in ports.values()
    (service_port,) = service["spec"]["ports"]
    target = service_port["targetPort"]
    assert (ports[target] if isinstance(target, str) else target) == port
    for probe in ("readinessProbe", "livenessProbe"):
        check = container[probe].get("grpc") or container[probe]["tcpSocket"]
        assert check["port"] in (port, *(name for name, number in ports.items() if number == port))
    # The state file on a volume of its own, the credentials from the Secret.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    state_dir = str(pathlib.PurePosixPath(option(command, "--state-file")).parent)
    assert mounts[state_dir] in {t["metadata"]["name"] for t in gateways["spec"]["volumeClaimTemplates"]}
    credentials = pathlib.PurePosixPath(option(command, "--credentials"))
    volume = {v["name"]: v for v in pod["spec"]["volumes"]}[mounts[str(credentials.parent)]]
    secret = one("Secret", volume["secret"]["secretName"])
    entries = tomllib.loads(secret["stringData"][credentials.name])["credential"]
    assert {entry["role"] for entry in entries} >= {"node", "client"}
    # The nodes dial the headless Service's name and port, with a node secret.
    nodes = one("Deployment", "easyremote-node")
    (node,) = nodes["spec"]["template"]["spec"]["containers"]
    assert node["command"][:2] == ["easyremote", "node"]
    host, _, dialled_port = option(node["command"], "--gateway").rpartition(":")
    assert host.split(".")[0] == service["metadata"]["name"] and "," not in host
    assert int(dialled_port) == service_port["port"]
    token = {e["name"]: e for e in node["env"]}["EASYREMOTE_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["key"] in one("Secret", token["name"])["stringData"]
    # A node id the node credential allows (POD_NAME is the Deployment's pod name).
    assert option(node["command"], "--node-id") == "$(POD_NAME)"
    node_credential = next(e for e in entries if e["role"] == "node")
    assert all(pattern.startswith(nodes["metadata"]["name"]) for pattern in node_credential["node_ids"])


@pytest.mark.timeout(30)
def test_the_client_service_is_a_regular_one_on_the_gateways() -> None:
    regular = [doc for doc in manifests() if doc["kind"] == "Service" and doc["spec"].get("clusterIP") != "None"]
    assert len(regular) == 1
    gateways = one("StatefulSet", "easyremote-gateway")
    assert regular[0]["spec"]["selector"].items() <= gateways["spec"]["template"]["metadata"]["labels"].items()
    (container,) = gateways["spec"]["template"]["spec"]["containers"]
    assert regular[0]["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}


# -- every command parses ---------------------------------------------------------------------

def all_commands() -> list[tuple[str, list[str]]]:
    found = [(f"compose {name}", s["command"]) for name, s in compose()["services"].items()]
    found += [(f"kubernetes {c['name']}", c["command"]) for c in manifest_containers()]
    found += [("docs/deploying.md", words) for words in doc_commands()]
    return found


@pytest.mark.timeout(30)
def test_every_easyremote_command_parses() -> None:
    commands = all_commands()
    from_doc = [words for where, words in commands if where == "docs/deploying.md"]
    mentioned = [line for block in _SHELL_BLOCK.findall(DOC.read_text()) for line in block.splitlines()
                 if re.search(r"(^|\s)easyremote\s", line)]
    assert len(from_doc) == len(mentioned) >= 10, mentioned  # the extraction found every command
    assert {words[1] for words in from_doc} >= {"gateway", "node", "nodes", "call", "token"}
    for where, words in commands:
        options = parse(words)
        if options.command in ("node", "nodes", "call"):
            assert options.gateway, f"{where}: {shlex.join(words)} names no gateway"


# -- the compose topology as real processes ---------------------------------------------------

def _new_secret(capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[str, str]:
    """``easyremote token new FLAGS``: the secret and its [[credential]] entry."""
    capsys.readouterr()
    assert main(["token", "new", *flags]) == 0
    printed = capsys.readouterr().out
    secret = re.search(r"^secret: (\S+)$", printed, re.M)
    assert secret is not None, printed
    return secret[1], printed[printed.index("[[credential]]"):]


def _gateway_args(command: list[str], **values: str) -> list[str]:
    """A compose gateway command after ``easyremote gateway``, with some options' values replaced."""
    args = list(command[2:])
    for flag, value in values.items():
        i = args.index("--" + flag.replace("_", "-"))
        args[i + 1] = value
    return args


@contextlib.contextmanager
def _until_exit(process: PythonProcess) -> Iterator[PythonProcess]:
    with process:
        process.start()
        yield process


def _healthcheck(service: dict[str, Any], gateway: GatewayProcess) -> int:
    """The exit code of a compose gateway's healthcheck, run here against ``gateway``."""
    test = service["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"], test
    port = option(service["command"], "--port")
    argv = [sys.executable, *(word.replace(f"localhost:{port}", gateway.address) for word in test[2:])]
    assert argv != [sys.executable, *test[2:]], "the healthcheck asks localhost at the gateway's --port"
    return subprocess.run(argv, timeout=30, capture_output=True).returncode


def _registered(node: PythonProcess, count: int) -> None:
    node.wait_for_line("Registered to VPS successfully", timeout=30, count=count)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_compose_topology_survives_a_killed_gateway(tmp_path: pathlib.Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    services = compose()["services"]
    gateways = gateway_services(services)
    (node_service,) = node_services(services).values()
    node_id = option(node_service["command"], "--node-id")
    node_secret, node_entry = _new_secret(capsys, "--role", "node", "--node-id", node_id.split("-")[0] + "-*")
    client_secret, client_entry = _new_secret(capsys, "--role", "client")
    credentials = tmp_path / "credentials.toml"
    credentials.write_text(node_entry + "\n" + client_entry)

    with contextlib.ExitStack() as stack:
        started: dict[str, GatewayProcess] = {}
        for name, service in gateways.items():
            process = stack.enter_context(GatewayProcess())
            process.args = tuple(_gateway_args(service["command"], port=str(process.port),
                                               credentials=str(credentials),
                                               state_file=str(tmp_path / f"{name}.sqlite3")))
            started[name] = process.start()
        # The node command of the compose file, each gateway's name and port replaced by its loopback address.
        container_ports = {f"{name}:{option(s['command'], '--port')}": started[name].address
                           for name, s in gateways.items()}
        argv = list(node_service["command"])
        i = argv.index("--gateway") + 1
        argv[i] = ",".join(container_ports[each] for each in argv[i].split(","))
        node = stack.enter_context(_until_exit(PythonProcess(
            "import sys; from easyremote._cli import main; sys.exit(main())", args=argv[1:], cwd=DEPLOY,
            env={"EASYREMOTE_TOKEN": node_secret}, name="node")))
        _registered(node, 2)

        first, second = started.values()
        for name, process in started.items():  # the compose healthcheck asks the gateway's health service
            assert _healthcheck(gateways[name], process) == 0
        both = f"{first.address},{second.address}"
        with Client(both, timeout=20, auth_token=client_secret) as client:
            client.wait_ready(10)
            assert client.execute("add", 1, 2) == 3
            for killed, other in ((first, second), (second, first)):
                killed.kill()
                assert _healthcheck(gateways[next(k for k, v in started.items() if v is killed)], killed) != 0
                # A call sent in the instant before the client notices is asked again through the
                # other gateway; if the killed one never passed it on, the node there says it does
                # not have it, and it runs (docs/deploying.md's failure table).
                assert client.execute("add", 1, 1) == 2
                for n in range(5):  # through the other one, whichever the client had
                    assert client.execute("add", n, 1) == n + 1
                with Client(other.address, timeout=10, auth_token=client_secret) as alone:
                    assert [n.node_id for n in alone.list_nodes()] == [node_id]
                registered = len([line for line in node.lines() if "Registered to VPS successfully" in line])
                begun = time.monotonic()
                killed.start()
                _registered(node, registered + 1)  # the node registers on it again, by itself
                assert time.monotonic() - begun < 15
                with Client(killed.address, timeout=10, auth_token=client_secret) as alone:
                    assert [n.node_id for n in alone.list_nodes()] == [node_id]
                    assert alone.execute("add", 2, 2) == 4
            assert client.execute("where") == client.execute("where")  # one node serves it
        assert node.running
