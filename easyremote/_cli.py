"""The ``easyremote`` command: gateway, nodes, call, plugins, demo."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import pathlib
import secrets
import signal
import sys
from collections.abc import Callable, Sequence

import anyio

from easyremote_core import EasyRemoteError, get_plugin_manager
from easyremote_core._backend import limit_malloc_arenas
from easyremote_core._backend import run as run_loop
from easyremote_core._client import Client
from easyremote_core._errors import (
    AuthenticationError,
    ConfigurationError,
    GatewayUnavailableError,
    RemoteExecutionError,
    StreamingFunctionError,
)
from easyremote_core._gateway import Gateway
from easyremote_core._gateway._identities import ROLES
from easyremote_core._node import ComputeNode
from easyremote_core._transport import DEFAULT_MAX_MESSAGE_SIZE, TLSConfig

from . import __version__

#: Exit codes; 2 stays argparse's usage error.
EXIT_OK, EXIT_ERROR, EXIT_UNAVAILABLE, EXIT_REMOTE, EXIT_AUTH, EXIT_INTERRUPTED = 0, 1, 3, 4, 5, 130
EXIT_CODES = """exit codes:
  0    success
  1    an error: a bad setting, a failed call, a refused connection
  2    a usage error (wrong arguments)
  3    the gateway is unavailable (not reachable, or a node's --max-retry-attempts ran out)
  4    the remote function raised (easyremote call)
  5    the gateway refused the token
  130  interrupted (Ctrl+C)"""
GATEWAY_ENV = "EASYREMOTE_GATEWAY"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="easyremote", description="Share compute through an EasyRemote gateway.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--version", action="version", version=f"easyremote {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    gateway = commands.add_parser("gateway", help="run a gateway", description="Run a gateway until Ctrl+C or SIGTERM.")
    gateway.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    gateway.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default 8080)")
    gateway.add_argument("--transport", default=None, help="transport name (default $EASYREMOTE_TRANSPORT or grpc)")
    gateway.add_argument("--also-listen", action="append", default=[], metavar="SCHEME://HOST:PORT",
                         help="listen on another transport too, e.g. tcp://0.0.0.0:8081 (repeatable)")
    gateway.add_argument("--token", default=None, help="shared secret nodes and clients must present")
    gateway.add_argument("--credentials", default=None, metavar="FILE",
                         help="TOML file of [[credential]] tables: per-secret roles (see easyremote token new)")
    gateway.add_argument("--heartbeat-timeout", type=float, default=15.0,
                         help="evict a node silent for this many seconds (default 15)")
    gateway.add_argument("--node-grace", type=float, default=None,
                         help="how long calls wait for a lost node to come back (default: --heartbeat-timeout)")
    gateway.add_argument("--startup-grace", type=float, default=None,
                         help="how long a call for a function served before waits when none of its nodes is "
                         "here, e.g. after a restart (default: --heartbeat-timeout)")
    gateway.add_argument("--state-file", default=None, metavar="FILE",
                         help="SQLite file of the nodes and functions this gateway served, read at start "
                         "(default: easyremote/gateway-PORT.sqlite3 in the user's state directory)")
    gateway.add_argument("--no-state-file", action="store_true",
                         help="remember what was served in memory only (a restart forgets it)")
    gateway.add_argument("--max-message-size", type=_size, default=DEFAULT_MAX_MESSAGE_SIZE, metavar="BYTES",
                         help="largest frame accepted, e.g. 16MiB (default 64MiB)")
    gateway.add_argument("--max-peer-buffer", type=_size, default=None, metavar="BYTES",
                         help="cut off a peer once this much waits to be sent to it "
                         "(default: 64MiB or 4 x --max-message-size, whichever is larger)")
    gateway.add_argument("--handshake-timeout", type=float, default=10.0,
                         help="close a connection that has not finished its handshake after this long (default 10)")
    gateway.add_argument("--max-pending-handshakes", type=int, default=1000, metavar="N",
                         help="connections in their handshake at once; one more closes the oldest (default 1000)")
    gateway.add_argument("--tls-cert", help="server certificate (PEM) to serve TLS")
    gateway.add_argument("--tls-key", help="private key (PEM) of --tls-cert")
    gateway.add_argument("--tls-client-ca", help="require client certificates signed by this CA (PEM)")

    node = commands.add_parser(
        "node", help="serve the functions of a Python file or module",
        description="Connect to a gateway and serve every public function defined in a Python file or "
        "module (names starting with '_' are skipped). Reconnects by itself; exits 3 when "
        "--max-retry-attempts run out.")
    node.add_argument("--gateway", default=os.environ.get(GATEWAY_ENV) or None,
                      help="gateway address, host:port or scheme://host:port, or several separated by commas "
                           "(default $EASYREMOTE_GATEWAY); the node registers on each")
    node.add_argument("--node-id", default=None, help="stable identity (default: hostname-random)")
    node.add_argument("--token", default=None, help="auth token (default $EASYREMOTE_TOKEN)")
    node.add_argument("--transport", default=None, help="transport name")
    node.add_argument("--retry-policy", default=None, help="retry policy name (default exponential)")
    node.add_argument("--health-probe", action="append", default=None, metavar="NAME", dest="health_probes",
                      help="health probe to run on the link, besides the heartbeat (repeatable; default: "
                      "$EASYREMOTE_HEALTH_PROBES or the transport's own)")
    node.add_argument("--reconnect-interval", type=float, default=2.0, help="base backoff delay (default 2)")
    node.add_argument("--max-reconnect-interval", type=float, default=60.0, help="backoff cap (default 60)")
    node.add_argument("--max-retry-attempts", type=int, default=None, help="give up after N failed attempts")
    node.add_argument("--heartbeat-interval", type=float, default=5.0, help="seconds between heartbeats (default 5)")
    node.add_argument("--heartbeat-timeout", type=float, default=15.0, help="declare the link dead after (default 15)")
    node.add_argument("--connection-timeout", type=float, default=10.0, help="bound of one attempt (default 10)")
    node.add_argument("--execution-timeout", type=float, default=300.0, help="bound of one call (default 300)")
    node.add_argument("--idempotent", action="append", default=[], metavar="FUNCTION",
                      help="this function may run again after a lost link (repeatable; '*' for all)")
    node.add_argument("--result-retention", type=float, default=300.0,
                      help="seconds each answer of a non-idempotent call is kept for a caller that asks "
                      "again through another gateway (default 300)")
    _dial_tls_arguments(node)
    node.add_argument("source", metavar="FILE_OR_MODULE", help="a .py file or an importable module name")

    nodes = commands.add_parser("nodes", help="list the nodes a gateway knows",
                                description="List the nodes a gateway knows, with their functions.")
    nodes.add_argument("--gateway", default=os.environ.get(GATEWAY_ENV) or None,
                       help="gateway address, host:port, or several separated by commas (default "
                            "$EASYREMOTE_GATEWAY); the first that answers is asked")
    nodes.add_argument("--token", default=None, help="auth token")
    _dial_tls_arguments(nodes)
    nodes.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    nodes.add_argument("--connect-timeout", type=float, default=5.0,
                       help="give up when the gateway cannot be reached within this (default 5)")

    call = commands.add_parser("call", help="call a function", description="Call a function on a node and print "
                               "its result as JSON. Each argument is JSON (quote strings: '\"text\"').")
    call.add_argument("--gateway", default=os.environ.get(GATEWAY_ENV) or None,
                      help="gateway address, host:port, or several separated by commas (default "
                           "$EASYREMOTE_GATEWAY); the call goes through one that is ready")
    call.add_argument("--token", default=None, help="auth token")
    call.add_argument("--node-id", default=None, help="run on this node")
    call.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the result (default 30)")
    call.add_argument("--connect-timeout", type=float, default=5.0,
                      help="give up when the gateway cannot be reached within this (default 5)")
    call.add_argument("--kwargs", default=None, help="keyword arguments as a JSON object")
    _dial_tls_arguments(call)
    call.add_argument("function", help="function name")
    call.add_argument("args", nargs="*", metavar="JSON_ARG", help="positional arguments, each a JSON value")

    commands.add_parser("plugins", help="list transports, retry policies and probes",
                        description="List every transport, retry policy and health probe with its distribution.")

    token = commands.add_parser("token", help="make secrets for a gateway's credentials file")
    token_commands = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    new = token_commands.add_parser("new", help="print a new secret and its [[credential]] entry")
    new.add_argument("--role", required=True, choices=ROLES, help="what the secret's holder may do")
    new.add_argument("--node-id", action="append", default=[], metavar="PATTERN",
                     help="node_ids a node may claim, a glob such as 'gpu-*' (repeatable; default any)")
    new.add_argument("--function", action="append", default=[], metavar="PATTERN",
                     help="functions it may serve or call, globs (repeatable; default any)")
    new.add_argument("--name", default=None, help="a name for the credential, shown in the gateway's logs")

    demo = commands.add_parser("demo", help="run a gateway, a node and a client, and restart the gateway",
                               description="Run a gateway, a node and a client on this machine, restart the "
                               "gateway while the client keeps calling, and report the timings.")
    demo.add_argument("--transport", default="grpc", help="transport to use (default grpc)")
    demo.add_argument("--outage", type=float, default=2.0, help="seconds the gateway stays down (default 2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    if getattr(options, "gateway", "unused") is None:
        parser.error(f"{options.command}: --gateway is required (or set ${GATEWAY_ENV})")
    # Long-running commands show what happens (INFO); one-shot ones print only their answer.
    chatty = options.command in ("gateway", "node", "demo")
    level = (logging.WARNING if options.quiet or (not chatty and not options.verbose)
             else logging.DEBUG if options.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client_logs = logging.getLogger("easyremote.client")
    client_level = client_logs.level
    if not chatty and not options.verbose:
        # Each failed attempt of a one-shot command is logged; the one line printed at the end says why.
        client_logs.setLevel(logging.CRITICAL)
    try:
        return _run(options)
    finally:
        client_logs.setLevel(client_level)  # main() called in-process leaves the caller's logging as it was


def _run(options: argparse.Namespace) -> int:
    try:
        return _COMMANDS[options.command](options)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except GatewayUnavailableError as exc:
        print(f"easyremote: gateway unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except AuthenticationError as exc:
        print(f"easyremote: refused: {exc}", file=sys.stderr)
        return EXIT_AUTH
    except EasyRemoteError as exc:
        print(f"easyremote: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"easyremote: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _dial_tls_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-ca", default=None, metavar="PEM",
                        help="dial the gateway over TLS, trusting this CA (the gateway's --tls-cert issuer)")
    parser.add_argument("--tls-cert", default=None, metavar="PEM",
                        help="client certificate, for a gateway that asks for one (--tls-client-ca)")
    parser.add_argument("--tls-key", default=None, metavar="PEM", help="private key of --tls-cert")
    parser.add_argument("--tls-server-name", default=None, metavar="NAME",
                        help="the name the gateway's certificate must be issued for (default: the host dialled)")


def _dial_tls(options: argparse.Namespace) -> TLSConfig | None:
    """The TLS settings of a node or client command, or ``None`` for a plain-text link."""
    if not (options.tls_ca or options.tls_cert or options.tls_key or options.tls_server_name):
        return None
    if bool(options.tls_cert) != bool(options.tls_key):
        raise ConfigurationError("--tls-cert and --tls-key go together")
    if not options.tls_ca:
        raise ConfigurationError("TLS needs --tls-ca: the CA that issued the gateway's certificate")
    return TLSConfig(ca=options.tls_ca, cert=options.tls_cert, key=options.tls_key,
                     server_hostname=options.tls_server_name)


def _state_file(options: argparse.Namespace) -> str | None:
    if options.no_state_file:
        if options.state_file:
            raise ConfigurationError("--state-file and --no-state-file exclude each other")
        return None
    if options.state_file:
        return str(options.state_file)
    import platformdirs

    return os.path.join(platformdirs.user_state_dir("easyremote"), f"gateway-{options.port}.sqlite3")


def _gateway(options: argparse.Namespace) -> int:
    limit_malloc_arenas()  # before gRPC's threads allocate: less memory per connected node
    tls = None
    if options.tls_cert or options.tls_key:
        if not (options.tls_cert and options.tls_key):
            raise ConfigurationError("--tls-cert and --tls-key go together")
        tls = TLSConfig(cert=options.tls_cert, key=options.tls_key, ca=options.tls_client_ca,
                        require_client_cert=bool(options.tls_client_ca))
    gateway = Gateway(port=options.port, host=options.host, transport=options.transport,
                      also_listen=options.also_listen,
                      heartbeat_timeout=options.heartbeat_timeout, node_grace=options.node_grace,
                      startup_grace=options.startup_grace, max_message_size=options.max_message_size,
                      max_peer_buffer=options.max_peer_buffer, handshake_timeout=options.handshake_timeout,
                      max_pending_handshakes=options.max_pending_handshakes,
                      auth_token=options.token, credentials=options.credentials, tls=tls,
                      state_file=_state_file(options))

    async def run() -> None:
        async with gateway:  # it logs each address it listens on, once
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    logging.getLogger("easyremote").info("Received %s, shutting down", signal.Signals(signum).name)
                    return

    run_loop(run)
    return EXIT_OK


def _node(options: argparse.Namespace) -> int:
    functions = _load_functions(options.source)
    if not functions:
        raise ConfigurationError(f"{options.source} defines no public functions to serve")
    node = ComputeNode(
        options.gateway, options.node_id, transport=options.transport, retry_policy=options.retry_policy,
        health_probes=options.health_probes, auth_token=options.token, reconnect_interval=options.reconnect_interval,
        max_reconnect_interval=options.max_reconnect_interval, max_retry_attempts=options.max_retry_attempts,
        heartbeat_interval=options.heartbeat_interval, heartbeat_timeout=options.heartbeat_timeout,
        connection_timeout=options.connection_timeout, execution_timeout=options.execution_timeout,
        result_retention=options.result_retention, tls=_dial_tls(options),
    )
    names = {function.__name__ for function in functions}
    unknown = sorted(set(options.idempotent) - names - {"*"})
    if unknown:
        raise ConfigurationError(f"--idempotent {unknown[0]}: {options.source} defines no such public function")
    for function in functions:
        node.register(idempotent="*" in options.idempotent or function.__name__ in options.idempotent)(function)
    print(f"EasyRemote node {node.node_id} serving {', '.join(f.__name__ for f in functions)}", flush=True)
    node.serve()
    return EXIT_OK


def _load_functions(source: str) -> list[Callable[..., object]]:
    path = pathlib.Path(source)
    try:
        if source.endswith(".py") or path.exists():
            if not path.is_file():
                raise ConfigurationError(f"no such file: {source}")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(source)
    except SyntaxError as exc:
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else source
        raise ConfigurationError(f"cannot load {source}: syntax error at {where}: {exc.msg}") from None
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {source}: {exc}") from None
    except Exception as exc:  # the user's module raised while it was imported
        raise ConfigurationError(f"cannot load {source}: it raised {type(exc).__name__}: {exc}") from None
    return [value for name, value in vars(module).items()
            if not name.startswith("_") and inspect.isfunction(value) and value.__module__ == module.__name__]


def _nodes(options: argparse.Namespace) -> int:
    with Client(options.gateway, timeout=options.timeout, auth_token=options.token, tls=_dial_tls(options)) as client:
        client.wait_ready(options.connect_timeout)
        nodes = client.list_nodes()
    if not nodes:
        print("no nodes")
        return EXIT_OK
    print(f"{'NODE':24} {'STATE':13} {'IN FLIGHT':>9}  FUNCTIONS")
    for node in nodes:
        print(f"{node.node_id:24} {node.state:13} {node.in_flight:>9}  {', '.join(node.functions)}")
    return EXIT_OK


def _call(options: argparse.Namespace) -> int:
    args = [_json(text, f"argument {i + 1}") for i, text in enumerate(options.args)]
    kwargs = _json(options.kwargs, "--kwargs") if options.kwargs else {}
    if not isinstance(kwargs, dict):
        raise ConfigurationError("--kwargs must be a JSON object")
    with Client(options.gateway, timeout=options.timeout, auth_token=options.token, tls=_dial_tls(options)) as client:
        client.wait_ready(options.connect_timeout)
        try:
            try:
                result = client.call(options.function, tuple(args), kwargs, node_id=options.node_id)
            except StreamingFunctionError:  # refused before it ran: ask for its items instead
                for item in client.stream(options.function, *args, node_id=options.node_id, **kwargs):
                    _print_json(item)
                return EXIT_OK
        except RemoteExecutionError as exc:
            print(f"easyremote: {options.function} raised {exc.type_name}: {exc.remote_message}", file=sys.stderr)
            if exc.remote_traceback:
                print(exc.remote_traceback.rstrip(), file=sys.stderr)
            return EXIT_REMOTE
    _print_json(result)
    return EXIT_OK


def _print_json(value: object) -> None:
    try:
        print(json.dumps(value), flush=True)
    except TypeError:
        print(repr(value), flush=True)


def _json(text: str, what: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{what} is not valid JSON ({exc.msg}): {text!r}") from None


def _plugins(options: argparse.Namespace) -> int:
    manager = get_plugin_manager()
    for kind in ("transport", "retry policy", "health probe", "routing policy"):
        entries = manager.entries(kind)
        print(f"{kind}s:".replace("ys:", "ies:"))
        for name, entry in sorted(entries.items()):
            print(f"  {name:24} {entry.distribution:24} (plugin {entry.plugin})")
    return EXIT_OK


_UNITS = {"": 1, "B": 1, "KB": 1000, "KIB": 1024, "MB": 1000**2, "MIB": 1024**2, "GB": 1000**3, "GIB": 1024**3}


def _size(text: str) -> int:
    """``16MiB``, ``500KB``, ``1048576``: a size in bytes."""
    number = text.strip().rstrip("BbIiKkMmGg")
    unit = text.strip()[len(number):].upper()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or not 0 <= value < 2**63 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1048576, 500KB, 16MiB)")
    return int(value * _UNITS[unit])


def _token(options: argparse.Namespace) -> int:
    if options.role == "client" and options.node_id:
        raise ConfigurationError("--node-id means nothing for role client")
    secret = secrets.token_urlsafe(32)
    lines = ["[[credential]]"]
    lines.append(f"name = {json.dumps(options.name or f'{options.role}-{secret[:6]}')}")
    lines.append(f"role = {json.dumps(options.role)}")
    lines.append(f"sha256 = {json.dumps(hashlib.sha256(secret.encode()).hexdigest())}")
    for key, patterns in (("node_ids", options.node_id), ("functions", options.function)):
        if patterns:
            lines.append(f"{key} = [{', '.join(json.dumps(p) for p in patterns)}]")
    print(f"secret: {secret}")
    print("Give the secret to the node or client (--token / auth_token=, or $EASYREMOTE_TOKEN).")
    print("Add this entry to the gateway's credentials file; it holds only the secret's SHA-256:")
    print()
    print("\n".join(lines))
    return EXIT_OK


def _demo(options: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(transport=options.transport, outage=options.outage)


_COMMANDS = {"gateway": _gateway, "node": _node, "nodes": _nodes, "call": _call, "plugins": _plugins,
             "token": _token, "demo": _demo}
