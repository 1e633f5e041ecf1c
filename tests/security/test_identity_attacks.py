"""Attacks on identities against a real gateway process: wrong roles, stolen node_ids, hijacked calls.

The gateway runs with a credentials file (per-role secrets, hashed); each attack is followed
by a legitimate node and client that must still be served.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from easyremote import AsyncClient
from easyremote.errors import AuthenticationError
from easyremote_core.testing.processes import GatewayProcess

from ..scenarios.conftest import FAST, gateway_process, scenario_node

pytestmark = [pytest.mark.timeout(60), pytest.mark.anyio]

SECRETS = {"gpu": "gpu-farm-secret", "intruder": "intruder-secret", "caller": "caller-secret"}
CREDENTIALS = f"""
[[credential]]
name = "gpu-farm"
role = "node"
sha256 = "{hashlib.sha256(SECRETS['gpu'].encode()).hexdigest()}"
node_ids = ["gpu-*"]

[[credential]]
name = "intruder"
role = "node"
sha256 = "{hashlib.sha256(SECRETS['intruder'].encode()).hexdigest()}"
node_ids = ["intruder-*"]

[[credential]]
name = "caller"
role = "client"
sha256 = "{hashlib.sha256(SECRETS['caller'].encode()).hexdigest()}"
"""


@pytest.fixture(scope="module", params=["grpc", "tcp"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    path: Path = tmp_path_factory.mktemp("credentials") / "credentials.toml"
    path.write_text(CREDENTIALS)
    with gateway_process(request.param, extra_args=("--credentials", str(path))) as process:
        yield process


def url(gateway: GatewayProcess) -> str:
    return f"{gateway.args[1]}://{gateway.address}"


async def still_serves(gateway: GatewayProcess, node_id: str = "gpu-steady") -> None:
    """A legitimate node registers and a legitimate client's call is answered."""
    node = scenario_node(url(gateway), node_id, auth_token=SECRETS["gpu"])
    async with node, AsyncClient(url(gateway), auth_token=SECRETS["caller"], timeout=10, **FAST) as client:
        with anyio.fail_after(15):
            await node.wait_ready()
            assert await client.execute("add", 2, 3, node_id=node_id) == 5


async def refused(gateway: GatewayProcess, node_id: str, secret: str, match: str) -> None:
    node = scenario_node(url(gateway), node_id, auth_token=secret)
    with anyio.fail_after(15), pytest.raises(AuthenticationError, match=match):
        await node.run()


async def test_a_client_credential_cannot_register_a_node(gateway: GatewayProcess) -> None:
    await refused(gateway, "gpu-1", SECRETS["caller"], "credential 'caller' has role client: it may not register")
    await still_serves(gateway)


async def test_a_node_credential_cannot_claim_an_id_outside_its_patterns(gateway: GatewayProcess) -> None:
    await refused(gateway, "gpu-7", SECRETS["intruder"], r"may not claim node_id 'gpu-7' \(allowed: intruder-\*\)")
    await still_serves(gateway, "gpu-7")  # the id is the farm's, at once


async def test_a_node_credential_cannot_call(gateway: GatewayProcess) -> None:
    async with AsyncClient(url(gateway), auth_token=SECRETS["gpu"], timeout=5, **FAST) as c:
        with anyio.fail_after(15), pytest.raises(AuthenticationError, match="it may not call functions"):
            await c.execute("add", 1, 2)
    await still_serves(gateway)


async def test_the_old_lock_out_sequence_locks_no_one_out(gateway: GatewayProcess) -> None:
    # Once, the first token ever used for a node_id owned it forever: a stranger who
    # came first with another secret locked the real node out.
    await refused(gateway, "gpu-lock", "a-guessed-secret", "missing or wrong auth token")
    await refused(gateway, "gpu-lock", SECRETS["intruder"], "may not claim node_id 'gpu-lock'")
    await still_serves(gateway, "gpu-lock")


async def test_another_callers_call_id_is_refused_and_the_owner_gets_its_result(
        gateway: GatewayProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    node = scenario_node(url(gateway), "gpu-slow", auth_token=SECRETS["gpu"])
    async with node, AsyncClient(url(gateway), auth_token=SECRETS["caller"], timeout=15, **FAST) as victim, \
            AsyncClient(url(gateway), auth_token=SECRETS["caller"], timeout=15, **FAST) as thief:
        # The attacker has learnt the victim's call ids (both clients hold valid client secrets):
        # its first call carries the id of the victim's first call.
        monkeypatch.setattr(thief, "_call_prefix", victim._call_prefix)
        with anyio.fail_after(30):
            await node.wait_ready()
            await thief.wait_ready()
            results: list[str] = []
            async with anyio.create_task_group() as tg:
                async def victim_call() -> None:
                    results.append(await victim.execute("slow_once", 1.5, node_id="gpu-slow"))

                tg.start_soon(victim_call)
                await anyio.sleep(0.5)  # the victim's call is running on the node
                with pytest.raises(AuthenticationError, match="belongs to another caller"):
                    await thief.execute("slow_once", 0.1, node_id="gpu-slow")
            assert results == ["ran"]
    monkeypatch.undo()
    await still_serves(gateway)
