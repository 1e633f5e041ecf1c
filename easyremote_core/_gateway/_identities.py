"""Identities: who a peer is (its credential) and what it may do (register, call, claim a node_id)."""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from .._errors import ConfigurationError
from .._protocol import pb

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROLES = ("node", "client", "admin")
_KEYS = {"role", "node_ids", "functions", "name"}
_FILE_KEYS = _KEYS | {"sha256"}


@dataclass(frozen=True)
class Credential:
    """What a peer that presented one secret may do.

    ``node_ids`` and ``functions`` are glob patterns (``gpu-*``); empty means any.
    """

    name: str
    role: str  # "node", "client", "admin", or "anyone" when the gateway asks for no secret
    node_ids: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()

    @property
    def may_register(self) -> bool:
        return self.role in ("node", "admin", "anyone")

    @property
    def may_call(self) -> bool:
        return self.role in ("client", "admin", "anyone")

    @property
    def sees_details(self) -> bool:
        """Node lists with each node's address."""
        return self.role in ("admin", "anyone")

    def may_claim(self, node_id: str) -> bool:
        return not self.node_ids or any(fnmatchcase(node_id, pattern) for pattern in self.node_ids)

    def covers(self, function: str) -> bool:
        """Whether this credential may serve (a node) or call (a client) ``function``."""
        return not self.functions or any(fnmatchcase(function, pattern) for pattern in self.functions)


#: Without any secret configured, every peer gets this.
ANYONE = Credential(name="anyone", role="anyone")


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Identities:
    """Checks the secret a peer presents and what its credential allows.

    ``auth_token`` is one secret (or several) with every role; ``credentials`` gives each
    secret a role and patterns (a mapping ``{secret: {...}}`` or a TOML file of
    ``[[credential]]`` tables holding the secrets' SHA-256). Only hashes are kept, and a
    presented secret is compared with every one in constant time. Nothing is kept per peer.
    """

    def __init__(self, auth_token: str | Iterable[str] | None,
                 credentials: Mapping[str, Mapping[str, Any]] | str | os.PathLike[str] | None = None) -> None:
        tokens = [auth_token] if isinstance(auth_token, str) else list(auth_token or ())
        if auth_token is not None and not all(isinstance(t, str) and t for t in tokens):
            raise ConfigurationError("auth_token must be a non-empty string (or several)")
        self.shared = bool(tokens)
        self._entries: list[tuple[bytes, Credential]] = [
            (digest(token), Credential(name="auth_token", role="admin")) for token in tokens]
        self.has_credentials = credentials is not None
        if credentials is not None:
            self._entries += _load(credentials)
        origin = "" if credentials is None or isinstance(credentials, Mapping) else f"{os.fspath(credentials)}: "
        seen: dict[bytes, str] = {}
        for hashed, credential in self._entries:
            if hashed in seen:
                raise ConfigurationError(f"{origin}credential {credential.name!r} has the same secret as "
                                         f"{seen[hashed]!r}")
            seen[hashed] = credential.name

    @property
    def open(self) -> bool:
        """True when no secret is required: anyone who reaches the gateway may do anything."""
        return not self._entries

    def authenticate(self, hello: pb.Hello) -> Credential | pb.Reject:
        """The credential of the hello's secret, or the refusal the peer gets."""
        if not self._entries:
            return ANYONE
        presented = digest(hello.token)
        found: Credential | None = None
        for hashed, credential in self._entries:  # every entry, so the time says nothing of which matched
            if hmac.compare_digest(presented, hashed):
                found = credential
        if found is None:
            return _refuse("missing or wrong auth token")
        if hello.role == pb.ROLE_NODE:
            if not found.may_register:
                return _refuse(f"credential {found.name!r} has role {found.role}: it may not register a node")
            if not found.may_claim(hello.node_id):
                return _refuse(f"credential {found.name!r} may not claim node_id {hello.node_id[:200]!r} "
                               f"(allowed: {', '.join(found.node_ids)})")
        elif not found.may_call:
            return _refuse(f"credential {found.name!r} has role {found.role}: it may not call functions")
        return found


def _refuse(message: str) -> pb.Reject:
    return pb.Reject(reason=pb.Reject.REASON_AUTH, message=message)


def _load(source: Mapping[str, Mapping[str, Any]] | str | os.PathLike[str]) -> list[tuple[bytes, Credential]]:
    if isinstance(source, Mapping):
        entries = []
        for index, (secret, fields) in enumerate(source.items(), 1):
            where = f"credentials entry {index}"
            if not isinstance(secret, str) or not secret:
                raise ConfigurationError(f"{where}: the secret must be a non-empty string")
            entries.append((digest(secret), _credential(fields, where, _KEYS)))
        return entries
    path = os.fspath(source)
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigurationError(f"cannot read credentials file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"credentials file {path} is not valid TOML: {exc}") from None
    unknown = set(document) - {"credential"}
    if unknown:
        raise ConfigurationError(f"credentials file {path}: unknown table(s) {', '.join(sorted(unknown))}; "
                                 "expected [[credential]] tables")
    tables = document.get("credential", [])
    if not isinstance(tables, list) or not tables:
        raise ConfigurationError(f"credentials file {path} has no [[credential]] tables")
    entries = []
    for index, fields in enumerate(tables, 1):
        where = f"{path}: [[credential]] {index}"
        if not isinstance(fields, dict):
            raise ConfigurationError(f"{where} must be a table")
        hashed = fields.get("sha256")
        if not isinstance(hashed, str) or len(hashed) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hashed):
            raise ConfigurationError(f"{where}: sha256 must be the 64 hex digits of the secret's SHA-256 "
                                     "(easyremote token new prints it)")
        entries.append((bytes.fromhex(hashed), _credential(fields, where, _FILE_KEYS)))
    return entries


def _credential(fields: Any, where: str, allowed: set[str]) -> Credential:
    if not isinstance(fields, Mapping):
        raise ConfigurationError(f"{where} must be a mapping with a role")
    unknown = set(fields) - allowed
    if unknown:
        raise ConfigurationError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                                 f"allowed: {', '.join(sorted(allowed))}")
    role = fields.get("role")
    if role not in ROLES:
        raise ConfigurationError(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
    name = fields.get("name", f"{role} credential {where.rsplit(' ', 1)[-1]}")
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{where}: name must be a non-empty string")
    patterns = {}
    for key in ("node_ids", "functions"):
        value = fields.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) and p for p in value):
            raise ConfigurationError(f"{where}: {key} must be a list of non-empty glob patterns")
        patterns[key] = tuple(value)
    if patterns["node_ids"] and role == "client":
        raise ConfigurationError(f"{where}: node_ids mean nothing for role client")
    return Credential(name=name, role=role, node_ids=patterns["node_ids"], functions=patterns["functions"])
