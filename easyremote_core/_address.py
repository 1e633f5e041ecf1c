"""Parsing of gateway addresses: ``host:port`` or ``scheme://host:port``, one or several."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import anyio

from ._errors import ConfigurationError


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    scheme: str | None = None  # a transport name, when the address named one
    #: The name this address was resolved from, when a name that resolves to several
    #: addresses was given (TLS then verifies the gateway's certificate against the name).
    server_name: str | None = field(default=None, compare=False)

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


def parse_addresses(value: str | Iterable[str], *, parameter: str = "vps_address") -> tuple[Address, ...]:
    """One address, several separated by commas, or a list of them; each one gateway (duplicates once)."""
    if isinstance(value, str):
        if not value.strip():
            parse_address(value, parameter=parameter)  # raises: the message for one address
        texts = value.split(",")
    elif isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
        texts = list(value)
        if not all(isinstance(text, str) for text in texts):
            raise ConfigurationError(f"{parameter} must be 'host:port' strings, got {value!r}")
    else:
        raise ConfigurationError(f"{parameter} must be a 'host:port' string or a list of them, got {value!r}")
    addresses: list[Address] = []
    for text in texts:
        if not text.strip():
            raise ConfigurationError(f"{parameter} {value!r} has an empty address in its list")
        address = parse_address(text.strip(), parameter=parameter)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ConfigurationError(f"{parameter} must name at least one gateway, got {value!r}")
    return tuple(addresses)


def is_name(address: Address) -> bool:
    """Whether ``address`` names its host (rather than giving an IP address)."""
    try:
        ipaddress.ip_address(address.host)
    except ValueError:
        return True
    return False


async def expand(address: Address) -> tuple[Address, ...]:
    """The gateways ``address`` stands for: a host name that resolves to several addresses is
    several gateways (IPv4 ones when it has any, else IPv6), each dialled by its IP address;
    any other address is itself, resolved again by the transport at every attempt."""
    if not is_name(address):
        return (address,)
    hosts = await resolve_hosts(address)
    if hosts is None or len(hosts) < 2:
        return (address,)  # one gateway (or not resolvable now): the transport resolves it at each attempt
    return each_host(address, hosts)


def each_host(address: Address, hosts: list[str]) -> tuple[Address, ...]:
    """``address`` dialled at each of ``hosts``, its name kept for TLS."""
    return tuple(replace(address, host=host, server_name=address.host) for host in hosts)


async def resolve_hosts(address: Address) -> list[str] | None:
    """The IP addresses a name resolves to now (IPv4 ones when it has any, else IPv6), sorted;
    ``None`` if it does not resolve."""
    try:
        found = await anyio.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except OSError:
        return None
    v4 = {str(sockaddr[0]) for family, *_, sockaddr in found if family == socket.AF_INET}
    v6 = {str(sockaddr[0]) for family, *_, sockaddr in found if family == socket.AF_INET6}
    return sorted(v4 or v6) or None
