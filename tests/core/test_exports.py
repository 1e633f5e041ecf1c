"""The public surface: complete sorted __all__, and a core that imports without grpc."""

from __future__ import annotations

import subprocess
import sys

import pytest

import easyremote
import easyremote_core


@pytest.mark.parametrize("module", [easyremote, easyremote_core, easyremote.errors])
def test_all_is_sorted_and_complete(module) -> None:
    public = {name for name in vars(module) if not name.startswith("_")
              and not isinstance(vars(module)[name], type(sys)) and name not in {"annotations"}}
    exported = set(module.__all__)
    assert list(module.__all__) == sorted(module.__all__), "keep __all__ sorted"
    assert public - exported == set(), f"public but not in __all__: {public - exported}"
    assert all(hasattr(module, name) for name in exported)


def test_spec_names_are_exported() -> None:
    from easyremote import AsyncClient, Client, ComputeNode, Gateway, Server, remote  # noqa: F401

    assert Server is Gateway


@pytest.mark.timeout(60)
def test_the_core_runs_where_grpc_cannot_be_imported() -> None:
    code = """
import sys
sys.modules["grpc"] = None  # any 'import grpc' now fails
import anyio, easyremote_core
from easyremote import AsyncClient, ComputeNode, Gateway
assert "grpc" not in [m for m in sys.modules if sys.modules[m] is not None and m.split(".")[0] == "grpc"]
assert sorted(easyremote_core.get_plugin_manager().entries("transport")) == ["memory", "tcp"]

async def main():
    async with Gateway(port=0, host="127.0.0.1", transport="memory", startup_grace=0) as gw:
        node = ComputeNode(f"memory://127.0.0.1:{gw.port}", "n")
        node.register(lambda a, b: a + b, name="add")
        async with node:
            await node.wait_ready()
            async with AsyncClient(f"memory://127.0.0.1:{gw.port}") as client:
                print("result", await client.execute("add", 2, 3))
anyio.run(main)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr
    assert "result 5" in result.stdout


def test_grpc_is_imported_only_by_its_transport() -> None:
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    offenders = [str(path.relative_to(root)) for folder in ("easyremote_core", "easyremote", "policies")
                 for path in (root / folder).rglob("*.py")
                 if any(line.strip().startswith(("import grpc", "from grpc"))
                        for line in path.read_text().splitlines())]
    assert offenders == []
