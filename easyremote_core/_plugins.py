"""The plugin manager: loads the ``easyremote`` entry-point group and resolves names."""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import pluggy

from . import _heartbeat, _routing, hookspecs
from ._errors import PluginNotFoundError
from ._probes import HealthProbe
from ._retry import RetryPolicy
from ._routing import RoutingPolicy
from ._transport import Transport

logger = logging.getLogger(__name__)

DISABLE_ENV = "EASYREMOTE_DISABLE_PLUGINS"
T = TypeVar("T")


@dataclass(frozen=True)
class PluginEntry:
    kind: str  # "transport", "retry policy", "health probe" or "routing policy"
    name: str
    factory: Callable[..., Any]
    plugin: str  # the plugin (entry point) that provides it
    distribution: str  # "easyremote 0.1.0", or "<not installed>" for objects registered by hand


_KINDS = {
    "transport": "easyremote_transports",
    "retry policy": "easyremote_retry_policies",
    "health probe": "easyremote_health_probes",
    "routing policy": "easyremote_routing_policies",
}

#: Parts of the core registered as plugins of their own, like pytest's built-in plugins.
#: They are always there: ``$EASYREMOTE_DISABLE_PLUGINS`` names entry points only.
BUILTIN_PLUGINS = {"easyremote.liveness": _heartbeat, "easyremote.routing": _routing}


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with EasyRemote's hookspecs and name look-ups."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self._dists: dict[int, str] = {}
        self.failed: dict[str, str] = {}  # entry-point name -> why it did not load
        for name, plugin in BUILTIN_PLUGINS.items():
            self.register(plugin, name=name)
            self._dists[id(plugin)] = _core_distribution()

    def load_entry_points(self) -> int:
        """Load the ``easyremote`` entry-point group, except names in ``$EASYREMOTE_DISABLE_PLUGINS``.

        A plugin that fails to import is logged and skipped (its names are then
        simply not available), so one broken plugin cannot stop every other.
        """
        for name in _split(os.environ.get(DISABLE_ENV, "")):
            self.set_blocked(name)
        loaded = 0
        for entry_point in importlib.metadata.entry_points(group=hookspecs.PROJECT):
            if self.get_plugin(entry_point.name) or self.is_blocked(entry_point.name):
                continue
            try:
                plugin = entry_point.load()
            except Exception as exc:
                self.failed[entry_point.name] = f"{type(exc).__name__}: {exc}"
                logger.warning("EasyRemote plugin %r could not be loaded: %s", entry_point.name, exc)
                continue
            self.register(plugin, name=entry_point.name)
            dist = entry_point.dist
            self._dists[id(plugin)] = f"{dist.metadata['name']} {dist.version}" if dist else "<unknown>"
            loaded += 1
        return loaded

    def entries(self, kind: str) -> dict[str, PluginEntry]:
        """Every registered plugin of one kind, by name (the first registered wins)."""
        hook = getattr(self.hook, _KINDS[kind])
        dists = self._dists
        found: dict[str, PluginEntry] = {}
        for impl in reversed(hook.get_hookimpls()):  # registration order
            mapping = impl.function()
            for name, factory in (mapping or {}).items():
                if name not in found:
                    found[name] = PluginEntry(
                        kind=kind,
                        name=name,
                        factory=factory,
                        plugin=impl.plugin_name,
                        distribution=dists.get(id(impl.plugin), "<not installed>"),
                    )
        return found

    def _resolve(self, kind: str, name: str) -> PluginEntry:
        entries = self.entries(kind)
        try:
            return entries[name]
        except KeyError:
            raise PluginNotFoundError(kind, name, {n: e.distribution for n, e in entries.items()}) from None

    def transport(self, name: str, **options: Any) -> Transport:
        return self._resolve("transport", name).factory(**options)

    def retry_policy(self, name: str, **options: Any) -> RetryPolicy:
        return self._resolve("retry policy", name).factory(**options)

    def health_probe(self, name: str) -> HealthProbe:
        return self._resolve("health probe", name).factory()

    def routing_policy(self, name: str) -> RoutingPolicy:
        return self._resolve("routing policy", name).factory()

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observer hook; an observer that raises is logged, never propagated."""
        hook = getattr(self.hook, hook_name)
        if not hook.get_hookimpls():
            return
        try:
            hook(**kwargs)
        except Exception:
            logger.exception("observer hook %s raised", hook_name)


def _core_distribution() -> str:
    try:
        return f"easyremote {importlib.metadata.version('easyremote')}"
    except importlib.metadata.PackageNotFoundError:
        return "easyremote <not installed>"


def _split(text: str) -> Iterable[str]:
    return [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]


_manager: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide manager, loaded from entry points on first use."""
    global _manager
    if _manager is None:
        manager = PluginManager()
        manager.load_entry_points()
        _manager = manager
    return _manager


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests, or after installing a plugin)."""
    global _manager
    _manager = None
