"""The identities room: credentials from a mapping or a TOML file, roles, patterns, and no memory of peers."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import anyio
import pytest

from easyremote import Gateway
from easyremote.errors import AuthenticationError, ConfigurationError
from easyremote_core._gateway._identities import ANYONE, Credential, Identities
from easyremote_core._protocol import pb

from .conftest import client_for, running_node

pytestmark = pytest.mark.timeout(60)


def node_hello(node_id: str, token: str) -> pb.Hello:
    return pb.Hello(role=pb.ROLE_NODE, node_id=node_id, token=token)


def client_hello(token: str) -> pb.Hello:
    return pb.Hello(role=pb.ROLE_CLIENT, token=token)


MAPPING = {
    "farm": {"role": "node", "node_ids": ["gpu-*", "tpu-?"], "functions": ["train*"], "name": "farm"},
    "caller": {"role": "client", "functions": ["infer"]},
    "root": {"role": "admin"},
}


def test_roles_decide_who_may_register_and_who_may_call() -> None:
    ids = Identities(None, MAPPING)
    farm = ids.authenticate(node_hello("gpu-3", "farm"))
    assert isinstance(farm, Credential) and farm.role == "node" and not farm.may_call
    assert isinstance(ids.authenticate(node_hello("tpu-1", "farm")), Credential)
    assert "may not claim node_id 'cpu-1'" in ids.authenticate(node_hello("cpu-1", "farm")).message
    assert "may not claim node_id 'tpu-10'" in ids.authenticate(node_hello("tpu-10", "farm")).message
    assert "has role node: it may not call" in ids.authenticate(client_hello("farm")).message
    assert "has role client: it may not register" in ids.authenticate(node_hello("x", "caller")).message
    root = ids.authenticate(node_hello("anything", "root"))
    assert isinstance(root, Credential) and root.may_call and root.may_register and root.sees_details
    assert ids.authenticate(client_hello("nope")).reason == pb.Reject.REASON_AUTH
    assert ids.authenticate(client_hello("")).message == "missing or wrong auth token"


def test_function_patterns() -> None:
    farm = Credential(name="farm", role="node", functions=("train*",))
    assert farm.covers("train_resnet") and not farm.covers("shell")
    assert Credential(name="any", role="client").covers("whatever")


def test_auth_token_is_an_all_roles_secret_and_no_secret_is_anyone() -> None:
    ids = Identities(["one", "two"])
    assert ids.shared and not ids.has_credentials and not ids.open
    assert ids.authenticate(node_hello("n", "two")).role == "admin"
    assert Identities(None).authenticate(node_hello("n", "")) is ANYONE


def test_a_toml_file_of_hashed_secrets(tmp_path: Path) -> None:
    path = tmp_path / "credentials.toml"
    path.write_text(f"""
[[credential]]
name = "gpu-farm"
role = "node"
sha256 = "{hashlib.sha256(b'farm-secret').hexdigest()}"
node_ids = ["gpu-*"]

[[credential]]
role = "client"
sha256 = "{hashlib.sha256(b'caller-secret').hexdigest().upper()}"
""")
    ids = Identities(None, path)
    assert ids.authenticate(node_hello("gpu-1", "farm-secret")).name == "gpu-farm"
    assert ids.authenticate(client_hello("caller-secret")).role == "client"
    assert "farm-secret" not in path.read_text()


@pytest.mark.parametrize(("text", "says"), [
    ("[[credential]]\nrole = 'node'\n", "sha256 must be the 64 hex digits"),
    ("[[credential]]\nrole = 'node'\nsha256 = 'abc'\n", "sha256 must be the 64 hex digits"),
    (f"[[credential]]\nrole = 'root'\nsha256 = '{'a' * 64}'\n", "role must be one of node, client, admin"),
    (f"[[credential]]\nrole = 'node'\nsha256 = '{'a' * 64}'\nnode_id = 'x'\n", "unknown key(s) node_id"),
    (f"[[credential]]\nrole = 'node'\nsha256 = '{'a' * 64}'\nnode_ids = [1]\n", "node_ids must be a list"),
    (f"[[credential]]\nrole = 'client'\nsha256 = '{'a' * 64}'\nnode_ids = ['x']\n", "mean nothing for role client"),
    (f"[[credential]]\nrole = 'node'\nsha256 = '{'a' * 64}'\n" * 2, "has the same secret as"),
    ("[[credentials]]\nrole = 'node'\n", "unknown table(s) credentials"),
    ("", "has no [[credential]] tables"),
    ("role = \n", "is not valid TOML"),
])
def test_every_mistake_in_the_file_is_named(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "credentials.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        Identities(None, path)
    assert says in str(caught.value)
    assert str(path) in str(caught.value)


def test_mapping_mistakes_and_a_missing_file() -> None:
    with pytest.raises(ConfigurationError, match="the secret must be a non-empty string"):
        Identities(None, {"": {"role": "node"}})
    with pytest.raises(ConfigurationError, match="role must be one of"):
        Identities(None, {"s": {}})
    with pytest.raises(ConfigurationError, match="has the same secret as 'auth_token'"):
        Identities("s", {"s": {"role": "node"}})
    with pytest.raises(ConfigurationError, match="cannot read credentials file /nonexistent/creds.toml"):
        Identities(None, "/nonexistent/creds.toml")
    with pytest.raises(ConfigurationError, match="auth_token must be a non-empty string"):
        Identities("")


def test_every_secret_is_compared_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Constant time: the number of comparisons does not depend on which entry (if any) matched.
    ids = Identities(None, {f"secret-{i}": {"role": "admin"} for i in range(20)})
    compared: list[int] = []
    import easyremote_core._gateway._identities as module

    real = module.hmac.compare_digest
    monkeypatch.setattr(module.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    for token in ("secret-0", "secret-19", "wrong"):
        compared.clear()
        ids.authenticate(client_hello(token))
        assert len(compared) == 20, token


def test_nothing_is_remembered_per_node_id() -> None:
    ids = Identities(None, {"farm": {"role": "node"}})
    before = {name: sys.getsizeof(value) for name, value in vars(ids).items()}
    for i in range(10_000):
        assert isinstance(ids.authenticate(node_hello(f"node-{i}", "farm")), Credential)
    assert {name: sys.getsizeof(value) for name, value in vars(ids).items()} == before


async def test_the_registry_forgets_every_node_that_came_and_went() -> None:
    async with Gateway(port=0, host="127.0.0.1", transport="memory", node_grace=0, startup_grace=0,
                       credentials={"farm": {"role": "node"}, "caller": {"role": "client"}}) as gw:
        for i in range(200):
            async with running_node(gw, f"passing-{i}", auth_token="farm"):
                pass
        with anyio.fail_after(10):
            while gw.nodes():
                await gw._nodes.wait_changed()
        assert gw._call_table.calls == {}
        async with running_node(gw, "last", lambda n: n.register(lambda: 1, name="one"), auth_token="farm"), \
                client_for(gw, auth_token="caller") as client:
            assert await client.execute("one") == 1
            [info] = await client.list_nodes()
            assert info.peer == ""  # only admins see where nodes connect from


async def test_a_client_may_call_only_its_functions_and_a_node_serve_only_its_own() -> None:
    credentials = {"farm": {"role": "node", "functions": ["train*"]}, "caller": {"role": "client",
                                                                               "functions": ["train*"]}}
    async with Gateway(port=0, host="127.0.0.1", transport="memory", startup_grace=0,
                       credentials=credentials) as gw:
        def train(node) -> None:
            node.register(lambda: "trained", name="train_small")

        async with running_node(gw, "farm-1", train, auth_token="farm"), client_for(gw, auth_token="caller") as c:
            assert await c.execute("train_small") == "trained"
            with pytest.raises(AuthenticationError, match="credential 'client credential 2' may not call 'shell'"):
                await c.execute("shell")
        node_with_more = running_node(gw, "farm-2", lambda n: n.register(lambda: 0, name="shell"), auth_token="farm")
        with anyio.fail_after(10), pytest.raises(AuthenticationError, match="may not serve 'shell'"):
            async with node_with_more:
                pass
