"""Source the docs quote ("From `path`:" then a python block) is the source as it is today."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

pytestmark = pytest.mark.timeout(30)

ROOT = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("quote_source", ROOT / "scripts" / "quote_source.py")
assert _spec is not None and _spec.loader is not None
quote_source = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quote_source)

DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_the_interfaces_are_quoted() -> None:
    quoted = {match["path"] for doc in DOCS for match in quote_source.QUOTE.finditer(doc.read_text())}
    assert {"easyremote_core/hookspecs.py", "easyremote_core/_retry.py", "easyremote_core/_probes.py",
            "easyremote_core/_transport.py", "easyremote_core/_connection.py"} <= quoted


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_quoted_source_is_current(doc: pathlib.Path) -> None:
    text = doc.read_text()
    assert quote_source.refreshed(text) == text, (
        f"{doc.name} quotes source that has changed: run python scripts/quote_source.py")
