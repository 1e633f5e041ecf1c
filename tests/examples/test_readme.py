"""The README's three snippets run as written (only the port is a free one) and show, with no
logging set up, the gateway listening, the node registering, losing the link and coming back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from easyremote_core.testing.processes import PythonProcess, free_port

README = Path(__file__).resolve().parents[2] / "README.md"

pytestmark = [pytest.mark.timeout(90)]


def snippet(name: str, port: int) -> str:
    """The README's ```python block that starts with ``# name``, with port 8080 replaced."""
    for block in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        if block.startswith(f"# {name}"):
            assert "8080" in block
            return block.replace("8080", str(port))
    raise AssertionError(f"the README has no {name} snippet")


def test_the_readme_snippets_run_and_say_what_happens(tmp_path: Path) -> None:
    port = free_port()
    gateway = PythonProcess(snippet("gateway.py", port), name="readme-gateway", cwd=tmp_path)
    node = PythonProcess(snippet("node.py", port), name="readme-node", cwd=tmp_path)
    client = PythonProcess(snippet("client.py", port), name="readme-client", cwd=tmp_path)
    try:
        gateway.start()
        gateway.wait_for_line(f"EasyRemote gateway listening on 0.0.0.0:{port}", 20)
        node.start()
        node.wait_for_line("INFO    easyremote.node: Registered to VPS successfully", 20)
        gateway.wait_for_line("Node gpu-box registered 3 function(s): add, embed, progress", 10)

        client.start()
        assert client.wait(30) == 0, client.log_text()
        printed = [line for line in client.lines() if not line.startswith(("20", "---"))]
        assert printed[:3] == ["3", "[0, 1, 2]", "3"]
        assert "gpu-box" in printed[3]
        assert printed[4:] == ["3", "3"]

        gateway.kill()
        node.wait_for_line("ERROR   easyremote.node: Connection error (attempt 1):", 10)
        node.wait_for_line("Reconnecting in", 10)
        gateway.start()
        gateway.wait_for_line(f"EasyRemote gateway listening on 0.0.0.0:{port}", 20)
        node.wait_for_line("Registered to VPS successfully", 30, count=2)
    finally:
        for process in (client, node, gateway):
            process.close()
