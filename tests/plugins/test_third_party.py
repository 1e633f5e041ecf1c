"""A third-party plugin found through a real distribution's entry point, never registered by hand.

``examples/plugins`` is installed with pip into a temporary directory; every check runs in a
subprocess with that directory on ``PYTHONPATH``, so this test environment stays as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from easyremote_core import PluginManager

pytestmark = pytest.mark.timeout(120)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugins"
DISTRIBUTION = "easyremote-example-plugins 0.1.0"
ENTRY_POINT = "example-plugins"
SUBPROCESS_TIMEOUT = 60


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example distribution, installed by pip (offline, no dependencies) into a fresh directory."""
    root = tmp_path_factory.mktemp("third-party")
    source = root / "source"  # a copy, so the build leaves nothing behind in the repository
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = root / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
    )
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    assert (target / "easyremote_example_plugins-0.1.0.dist-info" / "entry_points.txt").is_file()
    return target


def run(site: Path, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EASYREMOTE_")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), environment.get("PYTHONPATH")]))
    environment.update(env)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=environment,
                          cwd=site.parent, timeout=SUBPROCESS_TIMEOUT)


def python(site: Path, code: str, **env: str) -> object:
    """Run ``code`` with the example installed; it prints one JSON value, which is returned."""
    result = run(site, ["-c", textwrap.dedent(code)], **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_environment_of_this_test_does_not_have_the_plugin() -> None:
    manager = PluginManager()
    manager.load_entry_points()
    assert "fibonacci" not in manager.entries("retry policy")
    assert "latency" not in manager.entries("health probe")


def test_discovered_through_the_entry_point_group(site: Path) -> None:
    found = python(site, """
        import importlib.metadata, json
        from easyremote_core import PluginManager
        [ep] = importlib.metadata.entry_points(group="easyremote", name="example-plugins")
        manager = PluginManager()
        manager.load_entry_points()
        policy = manager.entries("retry policy")["fibonacci"]
        probe = manager.entries("health probe")["latency"]
        print(json.dumps({
            "entry_point": [ep.value, ep.dist.metadata["name"], ep.dist.version],
            "policy": [policy.plugin, policy.distribution, policy.factory.__module__],
            "probe": [probe.plugin, probe.distribution, probe.factory.__module__],
            "failed": manager.failed,
        }))
    """)
    assert found == {
        "entry_point": ["easyremote_example_plugins", "easyremote-example-plugins", "0.1.0"],
        "policy": [ENTRY_POINT, DISTRIBUTION, "easyremote_example_plugins._fibonacci"],
        "probe": [ENTRY_POINT, DISTRIBUTION, "easyremote_example_plugins._latency"],
        "failed": {},
    }


def test_easyremote_plugins_lists_them_with_their_distribution(site: Path) -> None:
    result = run(site, ["-m", "easyremote", "plugins"])
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    for name in ("fibonacci", "latency"):
        assert DISTRIBUTION in lines[name] and f"(plugin {ENTRY_POINT})" in lines[name]
    assert "easyremote 0.1.0" in lines["exponential"]  # the shipped ones are still there


def test_selected_by_name_and_by_environment_variable(site: Path) -> None:
    code = """
        import json
        from easyremote import AsyncClient, ComputeNode
        by_name = ComputeNode("server:8080", "n", retry_policy="fibonacci", reconnect_interval=0.5,
                              max_reconnect_interval=8, health_probes=["heartbeat", "latency"])
        default = ComputeNode("server:8080", "n")
        client = AsyncClient("server:8080", retry_policy="fibonacci")
        print(json.dumps({
            "by_name": [type(by_name._plan.policy).__name__, by_name._plan.policy.base, by_name._plan.policy.cap,
                        [p.name for p in by_name._plan.probes]],
            "default": default._plan.policy.name,
            "client": client._plan.policy.name,
        }))
    """
    assert python(site, code) == {
        "by_name": ["FibonacciBackoff", 0.5, 8.0, ["heartbeat", "latency"]],
        "default": "exponential",
        "client": "fibonacci",
    }
    assert python(site, code, EASYREMOTE_RETRY_POLICY="fibonacci")["default"] == "fibonacci"


def test_blocked_by_entry_point_name(site: Path) -> None:
    blocked = {"EASYREMOTE_DISABLE_PLUGINS": ENTRY_POINT}
    listing = run(site, ["-m", "easyremote", "plugins"], **blocked)
    assert listing.returncode == 0, listing.stderr
    assert "fibonacci" not in listing.stdout and "latency" not in listing.stdout
    assert "exponential" in listing.stdout

    found = python(site, """
        import json, os
        from easyremote import ComputeNode
        from easyremote.errors import PluginNotFoundError
        errors = {}
        for label, make in {
            "policy by name": lambda: ComputeNode("server:8080", "n", retry_policy="fibonacci"),
            "probe by name": lambda: ComputeNode("server:8080", "n", health_probes=["latency"]),
        }.items():
            try:
                make()
            except PluginNotFoundError as exc:
                errors[label] = [str(exc), sorted(exc.available)]
        os.environ["EASYREMOTE_RETRY_POLICY"] = "fibonacci"
        try:
            ComputeNode("server:8080", "n")
        except PluginNotFoundError as exc:
            errors["policy by environment"] = [str(exc), sorted(exc.available)]
        print(json.dumps(errors))
    """, **blocked)
    assert set(found) == {"policy by name", "probe by name", "policy by environment"}
    for label in ("policy by name", "policy by environment"):
        message, available = found[label]
        assert message.startswith("no retry policy named 'fibonacci'; available: ")
        assert "exponential (easyremote 0.1.0)" in message
        assert available == ["constant", "decorrelated-jitter", "exponential", "full-jitter"]
    message, available = found["probe by name"]
    assert message.startswith("no health probe named 'latency'; available: ")
    assert "heartbeat (easyremote 0.1.0)" in message and "latency" not in available


def test_a_node_with_the_plugins_serves_calls(site: Path) -> None:
    """The installed policy and probe drive a real node through a real gateway (memory transport)."""
    found = python(site, """
        import json
        import anyio
        from easyremote import AsyncClient, ComputeNode, Gateway

        async def main():
            async with Gateway(port=0, host="127.0.0.1", transport="memory", startup_grace=0) as gw:
                node = ComputeNode(f"memory://127.0.0.1:{gw.port}", "n1", retry_policy="fibonacci",
                                   health_probes=["heartbeat", "latency"], heartbeat_interval=0.1,
                                   heartbeat_timeout=1.0, reconnect_interval=0.1)

                @node.register
                def add(a, b):
                    return a + b

                async with node, AsyncClient(f"memory://127.0.0.1:{gw.port}", retry_policy="fibonacci") as c:
                    with anyio.fail_after(20):
                        await node.wait_ready()
                        results = [await c.execute("add", i, i) for i in range(3)]
                    return {"results": results, "state": str(node.status().state),
                            "reconnects": node.status().reconnect_count}

        print(json.dumps(anyio.run(main)))
    """)
    assert found == {"results": [0, 2, 4], "state": "ready", "reconnects": 0}


def test_the_installed_policy_passes_the_retry_policy_contract_suite(site: Path) -> None:
    # As its author would run it: the suite shipped in easyremote_core.testing, by name.
    result = run(site, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "easyremote_core.testing.pytest_plugin",
                        "--pyargs", "easyremote_core.testing.policy_contract",
                        "--easyremote-retry-policy", "fibonacci"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "17 passed" in result.stdout, result.stdout


def test_the_installed_probe_passes_the_health_probe_contract_suite(site: Path) -> None:
    result = run(site, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "easyremote_core.testing.pytest_plugin",
                        "--pyargs", "easyremote_core.testing.probe_contract",
                        "--easyremote-health-probe", "latency"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout, result.stdout  # latency says it detects silence: all five apply
