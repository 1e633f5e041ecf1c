"""``@remote``: a local stub whose calls run on a node through the gateway."""

from __future__ import annotations

import functools
import inspect
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import anyio.to_thread

from ._address import parse_addresses
from ._client import Client
from ._errors import ConfigurationError

GATEWAY_ENV = "EASYREMOTE_GATEWAY"
_clients: dict[tuple[str, str | None], Client] = {}
_clients_lock = threading.Lock()


def _client(gateway: str, auth_token: str | None) -> Client:
    key = (gateway, auth_token)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = Client(gateway, auth_token=auth_token)
        return client


def remote(func: Callable[..., Any] | None = None, *, gateway: str | Sequence[str] | None = None,
           name: str | None = None,
           node_id: str | None = None, timeout: float | None = None, auth_token: str | None = None) -> Any:
    """Turn a function signature into a stub that runs on a node (its body never runs locally).

    ``gateway`` (one address, several separated by commas, or a list) defaults to
    ``$EASYREMOTE_GATEWAY``. An ``async def`` stub returns an
    awaitable; a generator stub yields the remote items.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        given = gateway or os.environ.get(GATEWAY_ENV)
        if not given:
            raise ConfigurationError(f"remote() needs gateway= or ${GATEWAY_ENV} to know where to call {fn.__name__}")
        # One client per list of gateways, however the list was written.
        address = ",".join(str(a) if a.scheme is None else f"{a.scheme}://{a}"
                           for a in parse_addresses(given, parameter="gateway"))
        function = name or fn.__name__

        def call(*args: Any, **kwargs: Any) -> Any:
            return _client(address, auth_token).call(function, args, kwargs, node_id=node_id, timeout=timeout)

        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def stream(*args: Any, **kwargs: Any) -> Any:
                return _client(address, auth_token).stream(function, *args, node_id=node_id, timeout=timeout,
                                                           **kwargs)
            return stream
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def acall(*args: Any, **kwargs: Any) -> Any:
                return await anyio.to_thread.run_sync(functools.partial(call, *args, **kwargs))
            return acall
        return functools.wraps(fn)(call)

    return decorate(func) if func is not None else decorate
