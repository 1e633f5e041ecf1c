"""The core's modules import one another in one direction only: no import circle, typing-only ones included."""

from __future__ import annotations

import ast
import pathlib

import pytest

pytestmark = [pytest.mark.timeout(30)]

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "easyremote_core"


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: pathlib.Path) -> set[str]:
    """Every easyremote_core module ``path`` imports, under ``TYPE_CHECKING`` too."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            target, names = "", [alias.name for alias in node.names]
        else:
            continue
        for name in [target, *names]:
            if name.startswith("easyremote_core"):
                found.add(name)
    return found


def test_no_module_of_the_core_imports_itself_back() -> None:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    # Edges between modules; a package's __init__ only re-exports, so it is left out.
    graph = {name: {dep for dep in imports_of(path) if dep in modules and dep not in packages and dep != name}
             for name, path in modules.items() if name not in packages}
    circles = []

    def visit(name: str, trail: list[str]) -> None:
        for dep in sorted(graph.get(name, ())):
            if dep in trail:
                circles.append(" -> ".join(trail[trail.index(dep):] + [dep]))
            elif dep in graph and len(trail) < len(graph):
                visit(dep, [*trail, dep])

    for name in sorted(graph):
        visit(name, [name])
    assert not circles, "\n".join(sorted(set(circles))[:10])
