"""Several gateways: one supervised link to each, seen by a node or client as one connection."""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

import anyio
import anyio.abc

from ._address import Address, each_host, expand, is_name, resolve_hosts
from ._config import LinkSettings
from ._errors import EasyRemoteError, GatewayUnavailableError
from ._link import FrameHandler, Link
from ._plugins import PluginManager
from ._probes import HealthProbe
from ._protocol import pb
from ._resolve import resolve_link_plugins, resolve_policy, resolve_transport, transport_name
from ._retry import RetryPolicy
from ._supervisor import ConnectionState, ConnectionSupervisor, StateCallback
from ._transport import LinkOptions, TLSConfig, Transport

logger = logging.getLogger("easyremote")


class GatewaySet:
    """The links of one node or client, one :class:`ConnectionSupervisor` per gateway.

    Its state is the best of theirs: ``ready`` while any link is, ``closed`` once every one
    has given up, else ``reconnecting`` (or ``connecting`` before any link was ever ready).
    A link that gives up (retries exhausted, refused) stays closed while the others go on;
    :meth:`run` raises only when the last one has.
    """

    def __init__(self, supervisors: Sequence[ConnectionSupervisor], *,
                 make: Callable[[Address], ConnectionSupervisor] | None = None,
                 names: Sequence[Address] = (), refresh: float = 30.0) -> None:
        assert supervisors, "a gateway set needs at least one gateway"
        self.supervisors: list[ConnectionSupervisor] = []
        self._callbacks: list[StateCallback] = []
        self._changed = anyio.Event()
        self._erred: ConnectionSupervisor | None = None  # the link that reported an error last
        self._make = make  # a new supervisor, for an address a name resolves to now
        self._names = [name for name in names if is_name(name)]
        self._refresh = refresh
        self._scopes: dict[ConnectionSupervisor, anyio.CancelScope] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        self._failures: list[EasyRemoteError] = []
        self._ended = anyio.Event()
        for supervisor in supervisors:
            self._add(supervisor)
        self.state = self._aggregate()

    def _add(self, supervisor: ConnectionSupervisor) -> None:
        self.supervisors.append(supervisor)
        self._scopes[supervisor] = anyio.CancelScope()  # from now on, run() waits for it too
        supervisor.on_state_change(functools.partial(self._on_change, supervisor))
        if self._task_group is not None:
            self._task_group.start_soon(self._keep, supervisor)

    # -- observing ------------------------------------------------------------------------

    def on_state_change(self, callback: StateCallback) -> None:
        """Call ``callback(old, new, reason)`` when the state of the whole set changes."""
        self._callbacks.append(callback)

    def _aggregate(self) -> ConnectionState:
        states = {supervisor.state for supervisor in self.supervisors}
        if ConnectionState.READY in states:
            return ConnectionState.READY
        states.discard(ConnectionState.CLOSED)
        if not states:
            return ConnectionState.CLOSED
        if states == {ConnectionState.IDLE}:
            return ConnectionState.IDLE
        if ConnectionState.RECONNECTING in states or any(s.sessions for s in self.supervisors):
            return ConnectionState.RECONNECTING
        return ConnectionState.CONNECTING

    @property
    def last_error(self) -> str:
        """The last error any link reported."""
        return self._erred.last_error if self._erred is not None else ""

    def _on_change(self, supervisor: ConnectionSupervisor, old: ConnectionState, new: ConnectionState,
                   reason: str) -> None:
        if supervisor.last_error:
            self._erred = supervisor
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
        before, self.state = self.state, self._aggregate()
        if before is self.state:
            return
        for callback in list(self._callbacks):
            try:
                callback(before, self.state, reason)
            except Exception:
                logger.exception("state-change callback %r raised", callback)

    @property
    def gateways(self) -> dict[str, str]:
        """Each gateway's address and the state of the link to it."""
        return {str(s.address): s.state.value for s in self.supervisors}

    @property
    def ready_links(self) -> list[Link]:
        return [s.link for s in self.supervisors if s.state is ConnectionState.READY and s.link is not None]

    @property
    def link(self) -> Link | None:
        """The first ready link, if any."""
        links = self.ready_links
        return links[0] if links else None

    @property
    def reconnect_count(self) -> int:
        return sum(s.reconnect_count for s in self.supervisors)

    @property
    def reconnect_attempts(self) -> int:
        return sum(s.reconnect_attempts for s in self.supervisors)

    @property
    def last_received_wall(self) -> float | None:
        """Wall-clock time of the last frame from any gateway."""
        times = [t for s in self.supervisors
                 if (t := s.link.last_received_wall if s.link is not None else s.last_received_wall) is not None]
        return max(times) if times else None

    @property
    def fatal_error(self) -> EasyRemoteError | None:
        """Why the set closed: the first link's reason, when every link gave up."""
        if self.state is not ConnectionState.CLOSED:
            return None
        for supervisor in self.supervisors:
            if supervisor.fatal_error is not None:
                return supervisor.fatal_error
        return None

    async def wait_ready(self) -> Link:
        """A ready link, as soon as there is one; ``GatewayUnavailableError`` once every link is closed."""
        while True:
            link = self.link
            if link is not None:
                return link
            if self.state is ConnectionState.CLOSED:
                raise self.fatal_error or GatewayUnavailableError(self.last_error or "the connection is closed")
            await self._changed.wait()

    async def wait_changed(self) -> None:
        """Until any link's state changes."""
        await self._changed.wait()

    # -- running --------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep every link up until cancelled; raise once every link has given up.

        The error that ended the first link is raised when the last one ends too. A name
        that resolved to several addresses is resolved again every ``refresh`` seconds: an
        address it gains gets a link, one it lost goes once its link is down.
        """
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            for supervisor in self.supervisors:
                tg.start_soon(self._keep, supervisor)
            if self._make is not None:
                for name in self._names:
                    tg.start_soon(self._follow, name)
            await self._ended.wait()
            tg.cancel_scope.cancel()
        self._task_group = None
        if self._failures:
            raise self._failures[0]

    async def _keep(self, supervisor: ConnectionSupervisor) -> None:
        try:
            with self._scopes[supervisor]:
                await supervisor.run()
        except EasyRemoteError as exc:
            self._failures.append(exc)
            others = [s for s in self.supervisors if s.state is not ConnectionState.CLOSED]
            if others:
                logger.error("Gave up on gateway %s (%s); %d other gateway(s) remain",
                             supervisor.address, exc, len(others))
        finally:
            self._scopes.pop(supervisor, None)
            if not self._scopes:
                self._ended.set()

    async def _follow(self, name: Address) -> None:
        """Resolve ``name`` again and again: links for the addresses it gains, none for those it lost."""
        assert self._make is not None
        while True:
            await anyio.sleep(self._refresh)
            hosts: list[str] | None = None
            with anyio.move_on_after(self._refresh):
                hosts = await resolve_hosts(name)
            if hosts is None:
                continue
            ours = [s for s in self.supervisors if s.address == name or s.address.server_name == name.host]
            by_name = [s for s in ours if s.address == name]
            if by_name and len(hosts) < 2:
                continue  # one gateway, dialled by its name: the transport resolves it at each attempt
            found = each_host(name, hosts)
            for address in found:
                if not any(s.address == address for s in ours):
                    logger.info("Gateway name %s resolves to %s now: linking to it", name.host, address)
                    self._add(self._make(address))
            for supervisor in ours:
                # A link dialled by the name goes too: the links to each address replace it.
                if supervisor.address not in found and (supervisor.state is not ConnectionState.READY
                                                        or supervisor in by_name):
                    logger.info("Gateway name %s no longer resolves to %s: dropping its link", name.host,
                                supervisor.address)
                    self._drop(supervisor)

    def _drop(self, supervisor: ConnectionSupervisor) -> None:
        scope = self._scopes.get(supervisor)
        if scope is None or len(self._scopes) == 1:
            return  # the last link stays
        self.supervisors.remove(supervisor)
        scope.cancel()
        self._on_change(supervisor, supervisor.state, supervisor.state, "")


class LinkPlan:
    """What a node or client dials its gateways with: resolved at construction, so that a
    wrong name fails early, and used to make one supervised link per gateway."""

    def __init__(self, plugins: PluginManager, addresses: Sequence[Address], settings: LinkSettings, *,
                 transport: str | Transport | None, retry_policy: str | RetryPolicy | None,
                 health_probes: Iterable[str | HealthProbe] | None, tls: TLSConfig | None,
                 max_message_size: int) -> None:
        self.plugins = plugins
        self.addresses = tuple(addresses)
        self.settings = settings
        self.tls = tls
        self.max_message_size = max_message_size
        self._transport_choice, self._policy_choice = transport, retry_policy
        self.transport, self.policy, self.probes = resolve_link_plugins(
            plugins, self.addresses[0], settings, transport=transport, retry_policy=retry_policy,
            health_probes=health_probes, tls=tls)
        # The transport of each address, by name (the scheme of an address may name another).
        self.transports = {transport_name(transport, self.addresses[0]): self.transport}
        for address in self.addresses[1:]:
            name = transport_name(transport, address)
            if name not in self.transports:
                self.transports[name] = resolve_transport(plugins, transport, address, tls=tls)

    async def gateways(self) -> list[Address]:
        """Every gateway, host names that resolve to several addresses expanded (bounded by
        ``connection_timeout``; a name that does not resolve in time stays a name)."""
        found: list[Address] = []
        for address in self.addresses:
            expanded: tuple[Address, ...] = (address,)
            with anyio.move_on_after(self.settings.connection_timeout):
                expanded = await expand(address)
            found.extend(each for each in expanded if each not in found)
        return found

    def supervisor(self, address: Address, *, first: bool, role: str, hello: Callable[[], pb.Hello],
                   on_frame: FrameHandler, on_link_lost: Callable[[Link, str], None],
                   establish: Callable[[Link], Awaitable[None]] | None = None) -> ConnectionSupervisor:
        """The supervised link to the gateway at ``address``, with a retry policy of its own."""
        tls = self.tls
        if tls is not None and address.server_name and not tls.server_hostname:
            tls = dataclasses.replace(tls, server_hostname=address.server_name)
        if first:
            policy = self.policy
        elif isinstance(self._policy_choice, RetryPolicy):
            policy = copy.copy(self._policy_choice)  # each link backs off on its own
        else:
            policy = resolve_policy(self.plugins, self._policy_choice, base=self.settings.reconnect_interval,
                                    cap=self.settings.max_reconnect_interval)
        return ConnectionSupervisor(
            role=role, address=address, transport=self.transports[transport_name(self._transport_choice, address)],
            link_options=LinkOptions(max_message_size=self.max_message_size,
                                     connect_timeout=self.settings.connection_timeout, tls=tls),
            settings=self.settings, policy=policy, probes=self.probes, hello=hello, on_frame=on_frame,
            establish=establish, on_link_lost=on_link_lost, plugins=self.plugins,
        )

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for transport in self.transports.values():
                await transport.aclose()
