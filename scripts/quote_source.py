"""Refresh the source the docs quote: ``python scripts/quote_source.py`` (``--check`` exits 1 when stale).

A quote is a line "From `path.py` ..." (or "From `path.py`, from `name` on ...") followed by a
python block; the block becomes the module's code after its docstring and imports (or from
the definition of ``name``), so the docs show the interface as it is.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
QUOTE = re.compile(r"^(?P<head>From `(?P<path>[^`]+\.py)`(?:, from `(?P<start>\w+)` on)?[^\n]*\n+```python\n)"
                   r"(?P<code>.*?)^```", re.S | re.M)


def body(path: pathlib.Path, start: str | None = None) -> str:
    """The module from ``start`` (a top-level name), or from its first statement that is not its
    docstring, an import or a typing-only block."""
    text = path.read_text()
    for node in ast.parse(text).body:
        if start is not None and getattr(node, "name", None) != start:
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            continue
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        return "".join(text.splitlines(keepends=True)[first - 1:])
    return ""


def refreshed(text: str) -> str:
    return QUOTE.sub(lambda m: m["head"] + body(ROOT / m["path"], m["start"]) + "```", text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    stale = []
    check = parser.parse_args().check
    for doc in sorted((ROOT / "docs").glob("*.md")):
        text = doc.read_text()
        new = refreshed(text)
        if new != text:
            stale.append(doc.name)
            if not check:
                doc.write_text(new)
    if stale:
        print(("stale: " if check else "refreshed: ") + ", ".join(stale))
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
