"""Identities: who a peer is (its credential) and what it may do (register, call, claim a node_id)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from .._errors import ConfigurationError
from .._protocol import pb


@dataclass(frozen=True)
class Credential:
    """What a peer that presented one secret may do."""

    name: str
    may_register: bool = True
    may_call: bool = True


#: Without any secret configured, every peer gets this.
ANYONE = Credential(name="anyone")


class Identities:
    """Checks the secret a peer presents; ``auth_token`` is one secret (or several) that allows everything."""

    def __init__(self, auth_token: str | Iterable[str] | None) -> None:
        if isinstance(auth_token, str):
            auth_token = [auth_token]
        self._tokens = [token.encode() for token in auth_token] if auth_token is not None else []
        if auth_token is not None and not all(self._tokens):
            raise ConfigurationError("auth_token must not be empty")
        self._owners: dict[str, bytes] = {}

    @property
    def open(self) -> bool:
        """True when no secret is required: anyone who reaches the gateway may do anything."""
        return not self._tokens

    def authenticate(self, hello: pb.Hello) -> Credential | pb.Reject:
        token = hello.token.encode()
        if self._tokens and not any(hmac.compare_digest(token, expected) for expected in self._tokens):
            return pb.Reject(reason=pb.Reject.REASON_AUTH, message="missing or wrong auth token")
        if hello.role == pb.ROLE_NODE:
            owner = self._owners.get(hello.node_id)
            if owner is not None and not hmac.compare_digest(owner, token):
                return pb.Reject(reason=pb.Reject.REASON_AUTH,
                                 message=f"node_id {hello.node_id!r} belongs to a peer with another token")
            self._owners.setdefault(hello.node_id, token)
        return ANYONE if not self._tokens else Credential(name="auth_token")
