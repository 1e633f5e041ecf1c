"""The tcp transport with one deliberate break each, for proving that the contract suite catches it.

Registered as transports named ``broken-<break>`` by ``register()``; each behaves as tcp except
for its break. ``tests/contract/test_breaks.py`` runs the contract suite against each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import anyio
from easyremote_tcp import TcpTransport

from easyremote_core import (
    Address,
    Connection,
    ConnectionHandler,
    ConnectionLostError,
    LinkOptions,
    Listener,
    Transport,
    get_plugin_manager,
    hookimpl,
)

#: What each break does, by the name of the transport that has it.
BREAKS = {
    "never-times-out": "connect ignores connect_timeout",
    "slow-drop": "drop() waits 2 s",
    "fragile-listener": "a handler that raises takes the listener down",
    "waits-for-handlers": "Listener.aclose() waits for the handlers to return",
    "orderly-when-broken": "a broken link is reported as an orderly close",
    "never-notices": "a dead peer is never noticed",
    "drops-large-frames": "frames over 1 MiB are silently dropped",
    "leaks-a-task": "every link leaves a task behind",
}

_leaked: set[asyncio.Task[None]] = set()


class BrokenConnection(Connection):
    def __init__(self, inner: Connection, kind: str) -> None:
        self.inner = inner
        self.kind = kind
        self.peer = inner.peer

    async def send(self, frame: bytes) -> None:
        if self.kind == "drops-large-frames" and len(frame) > 1024 * 1024:
            return
        await self.inner.send(frame)

    async def receive(self) -> bytes:
        try:
            return await self.inner.receive()
        except ConnectionLostError:
            if self.kind == "orderly-when-broken":
                raise anyio.EndOfStream from None
            if self.kind == "never-notices":
                await anyio.sleep_forever()
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def drop(self) -> None:
        if self.kind == "slow-drop":
            with anyio.CancelScope(shield=True):
                await anyio.sleep(2)
        await self.inner.drop()


class BrokenListener(Listener):
    def __init__(self, inner: Listener, kind: str) -> None:
        self.inner = inner
        self.kind = kind
        self.port = inner.port
        self._handlers = 0
        self._idle = anyio.Event()

    async def serve(self, handler: ConnectionHandler) -> None:
        async def run(connection: Connection) -> None:
            self._handlers += 1
            try:
                await handler(BrokenConnection(connection, self.kind))
            except Exception:
                if self.kind == "fragile-listener":
                    await self.inner.aclose()
                raise
            finally:
                self._handlers -= 1
                if not self._handlers:
                    self._idle.set()
                    self._idle = anyio.Event()

        await self.inner.serve(run)

    async def aclose(self) -> None:
        if self.kind == "waits-for-handlers":
            while self._handlers:
                await self._idle.wait()
        await self.inner.aclose()


class BrokenTransport(Transport):
    kind = ""
    backends = ("asyncio",)

    def __init__(self, **options: Any) -> None:
        self.inner = TcpTransport(**options)

    async def connect(self, address: Address, options: LinkOptions) -> Connection:
        if self.kind == "never-times-out":
            options = replace(options, connect_timeout=3600)
        connection = await self.inner.connect(address, options)
        if self.kind == "leaks-a-task":
            task = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
            _leaked.add(task)
        return BrokenConnection(connection, self.kind)

    async def listen(self, host: str, port: int, options: LinkOptions) -> Listener:
        return BrokenListener(await self.inner.listen(host, port, options), self.kind)

    async def wait_reachable(self, address: Address, options: LinkOptions) -> None:
        await self.inner.wait_reachable(address, options)


def _factory(kind: str) -> Callable[..., Transport]:
    return type(f"Broken_{kind.replace('-', '_')}", (BrokenTransport,), {"kind": kind, "name": f"broken-{kind}"})


@hookimpl
def easyremote_transports() -> Mapping[str, Callable[..., Transport]]:
    return {f"broken-{kind}": _factory(kind) for kind in BREAKS}


def register() -> None:
    import sys

    get_plugin_manager().register(sys.modules[__name__], name="contract-breaks")
