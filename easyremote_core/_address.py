"""Parsing of gateway addresses: ``host:port`` or ``scheme://host:port``."""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import ConfigurationError


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    scheme: str | None = None  # a transport name, when the address named one

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(text: str, *, parameter: str = "vps_address", allow_port_zero: bool = False) -> Address:
    """Parse ``host:port``, ``[v6]:port`` or ``scheme://host:port`` (port 0, "any free port",
    only where something listens)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigurationError(f"{parameter} must be a non-empty 'host:port' string, got {text!r}")
    scheme: str | None = None
    rest = text.strip()
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        scheme = scheme.lower()
        if not scheme:
            raise ConfigurationError(f"{parameter} {text!r} has an empty scheme")
    rest = rest.rstrip("/")
    if rest.startswith("["):
        host, sep, port_text = rest[1:].partition("]:")
    else:
        host, sep, port_text = rest.rpartition(":")
    if not sep or not host:
        raise ConfigurationError(f"{parameter} {text!r} must have the form 'host:port'")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigurationError(f"{parameter} {text!r}: port {port_text!r} is not a number") from None
    if not (0 if allow_port_zero else 1) <= port < 65536:
        lowest = 0 if allow_port_zero else 1
        raise ConfigurationError(f"{parameter} {text!r}: port must be between {lowest} and 65535")
    return Address(host=host, port=port, scheme=scheme)
