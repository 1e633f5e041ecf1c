"""Turning ``transport=``, ``retry_policy=`` and ``health_probes=`` arguments into objects."""

from __future__ import annotations

import os
from collections.abc import Iterable

from ._address import Address
from ._config import LinkSettings
from ._heartbeat import HeartbeatProbe
from ._plugins import PluginManager
from ._probes import HealthProbe
from ._retry import RetryPolicy
from ._transport import TLSConfig, Transport

TRANSPORT_ENV = "EASYREMOTE_TRANSPORT"
RETRY_POLICY_ENV = "EASYREMOTE_RETRY_POLICY"
HEALTH_PROBES_ENV = "EASYREMOTE_HEALTH_PROBES"  # comma-separated names
DEFAULT_TRANSPORT = "grpc"
DEFAULT_RETRY_POLICY = "exponential"


def transport_name(choice: str | Transport | None, address: Address | None = None) -> str:
    """The name that ``choice`` selects: explicit, else the address scheme, else the environment."""
    if isinstance(choice, Transport):
        return choice.name
    if choice:
        return choice
    if address is not None and address.scheme:
        return address.scheme
    return os.environ.get(TRANSPORT_ENV) or DEFAULT_TRANSPORT


def resolve_transport(
    plugins: PluginManager, choice: str | Transport | None, address: Address | None = None,
    *, tls: TLSConfig | None = None,
) -> Transport:
    if isinstance(choice, Transport):
        return choice
    name = transport_name(choice, address)
    return plugins.transport(name, tls=tls) if tls is not None else plugins.transport(name)


def resolve_policy(
    plugins: PluginManager, choice: str | RetryPolicy | None, *, base: float, cap: float
) -> RetryPolicy:
    if isinstance(choice, RetryPolicy):
        return choice
    name = choice or os.environ.get(RETRY_POLICY_ENV) or DEFAULT_RETRY_POLICY
    return plugins.retry_policy(name, base=base, cap=cap)


def resolve_probes(
    plugins: PluginManager, choice: Iterable[str | HealthProbe] | None, transport: Transport
) -> list[HealthProbe]:
    """The probes of a link; the core's heartbeat watch is always among them (liveness cannot be switched off).

    ``None`` means ``$EASYREMOTE_HEALTH_PROBES`` (names separated by commas) when it is set,
    else the transport's own probes (``Transport.default_probes``).
    """
    if choice is None and os.environ.get(HEALTH_PROBES_ENV, "").strip():
        choice = [name.strip() for name in os.environ[HEALTH_PROBES_ENV].split(",") if name.strip()]
    if choice is None:
        probes = [*transport.default_probes()]
    else:
        probes = [item if isinstance(item, HealthProbe) else plugins.health_probe(item) for item in choice]
    if not any(isinstance(probe, HeartbeatProbe) for probe in probes):
        probes.append(HeartbeatProbe())
    return probes


def resolve_link_plugins(
    plugins: PluginManager, address: Address, settings: LinkSettings, *, transport: str | Transport | None,
    retry_policy: str | RetryPolicy | None, health_probes: Iterable[str | HealthProbe] | None,
    tls: TLSConfig | None,
) -> tuple[Transport, RetryPolicy, list[HealthProbe]]:
    """What a node or client connects with, resolved at construction so a wrong name fails early."""
    chosen = resolve_transport(plugins, transport, address, tls=tls)
    policy = resolve_policy(plugins, retry_policy, base=settings.reconnect_interval,
                            cap=settings.max_reconnect_interval)
    return chosen, policy, resolve_probes(plugins, health_probes, chosen)
