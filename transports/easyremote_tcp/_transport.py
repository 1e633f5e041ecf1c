"""The ``tcp`` transport: envelope frames with a 4-byte big-endian length over anyio TCP streams."""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import sniffio
from anyio.abc import ByteStream, SocketAttribute, SocketListener, SocketStream, TaskGroup
from anyio.streams.stapled import MultiListener
from anyio.streams.tls import TLSStream

from easyremote_core import (
    Address,
    ConfigurationError,
    Connection,
    ConnectionAttribute,
    ConnectionHandler,
    ConnectionLostError,
    GatewayUnavailableError,
    LinkOptions,
    Listener,
    MessageTooLargeError,
    ProtocolError,
    TLSConfig,
    Transport,
    wait_until_listening,
)
from easyremote_core._logs import Quieter, capped
from easyremote_core._slots import OldestOut
from easyremote_core._tls import CLIENT_CERT, PLAIN_TO_TLS, explain_error, speaks_tls

from ._loop import LoopConnection
from ._wire import (
    _COALESCE_LIMIT,
    _HEADER,
    _READ_CHUNK,
    _SEND_SLICE,
    GREETING,
    GREETING_CUT,
    FrameParser,
    check_greeting,
    describe,
)

logger = capped(logging.getLogger(__name__))

_CLOSE_LINGER = 1.0  # seconds an orderly close waits for the peer's own close


@dataclass(frozen=True)
class SocketTuning:
    """Kernel settings applied to every TCP socket of the transport.

    The heartbeat probe is what detects a silent peer within ``heartbeat_timeout``;
    these settings are the kernel's own backstop, matching the gRPC transport's
    keepalive (20 s idle, 3 s between probes):

    - ``TCP_NODELAY``: frames are small request/answer messages; Nagle's algorithm
      would hold them back waiting for an acknowledgement.
    - ``SO_KEEPALIVE`` with ``TCP_KEEPIDLE``/``TCP_KEEPINTVL``/``TCP_KEEPCNT``: an idle
      link whose peer vanished (power cut, NAT entry dropped) is torn down after
      about ``idle + interval * count`` seconds instead of the system default of hours.
    - ``TCP_USER_TIMEOUT``: keepalive only runs on idle links; when sent data stays
      unacknowledged for this long (a half-open link under load), the kernel drops
      the link instead of retransmitting for about 15 minutes.
    """

    keepalive_idle: int = 20
    keepalive_interval: int = 3
    keepalive_count: int = 3
    user_timeout: float = 20.0

    def apply(self, sock: socket.socket) -> None:
        settings: list[tuple[int, str, int]] = [
            (socket.IPPROTO_TCP, "TCP_NODELAY", 1),
            (socket.SOL_SOCKET, "SO_KEEPALIVE", 1),
            (socket.IPPROTO_TCP, "TCP_KEEPIDLE", self.keepalive_idle),
            (socket.IPPROTO_TCP, "TCP_KEEPALIVE", self.keepalive_idle),  # macOS's name for the idle time
            (socket.IPPROTO_TCP, "TCP_KEEPINTVL", self.keepalive_interval),
            (socket.IPPROTO_TCP, "TCP_KEEPCNT", self.keepalive_count),
            (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", int(self.user_timeout * 1000)),
        ]
        for level, name, value in settings:
            option = getattr(socket, name, None)
            if option is None:  # not offered by this platform
                continue
            try:
                sock.setsockopt(level, option, value)
            except OSError as exc:
                logger.debug("cannot set %s=%s on a tcp link: %s", name, value, exc)


class TcpConnection(FrameParser, Connection):
    """One TCP link carrying length-prefixed frames. ``abort()`` resets it."""

    def __init__(self, stream: ByteStream, raw: SocketStream, peer: str, max_message_size: int) -> None:
        self.peer = peer
        self._stream = stream  # the TLS stream, or the socket stream itself
        self._raw = raw
        self._max = max_message_size
        self._init_frames()
        self._send_lock = anyio.Lock()
        self._receive_lock = anyio.Lock()
        self._closed = False  # no more sends or receives
        self._aborted = False  # the close will be a reset
        self._released = False  # the socket is closed

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {ConnectionAttribute.send_many: lambda: self.send_many,
                SocketAttribute.raw_socket: lambda: self._raw.extra(SocketAttribute.raw_socket)}

    async def send(self, frame: bytes) -> None:
        await self.send_many([frame])

    async def send_many(self, frames: list[bytes]) -> None:
        """Send ``frames`` in order, small ones together in one write; raises
        ``MessageTooLargeError`` before sending any if one is too large."""
        for frame in frames:
            if len(frame) > self._max:
                raise MessageTooLargeError(f"frame of {len(frame)} bytes exceeds max_message_size ({self._max})")
        writes = _coalesce(frames)
        async with self._send_lock:
            if self._closed:
                raise ConnectionLostError(f"link to {self.peer} is closed")
            await anyio.lowlevel.checkpoint_if_cancelled()
            try:
                for data in writes:
                    if len(data) <= _SEND_SLICE:
                        await self._stream.send(data)
                        continue
                    # A large frame goes out slice by slice, each once the last has drained: the
                    # event loop's write buffer then never holds (and moves about) megabytes.
                    with memoryview(data) as view:
                        for start in range(0, len(data), _SEND_SLICE):
                            await self._stream.send(view[start : start + _SEND_SLICE])  # type: ignore[arg-type]
            except anyio.get_cancelled_exc_class():
                # Part of the frame may be on the wire already; the peer could never
                # find the next frame boundary, so the link cannot be used again.
                with anyio.CancelScope(shield=True):
                    await self.abort()
                raise
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise ConnectionLostError(f"link to {self.peer} broke: {describe(exc)}") from exc

    async def receive(self) -> bytes:
        """The next frame. One already read is returned without waiting: a chunk of many
        frames is taken whole before the event loop runs anything else, so answers to them
        go out together in one write."""
        frame = await self._next_frame()
        if frame is not None:
            return frame
        async with self._receive_lock:
            while True:
                frame = await self._next_frame()
                if frame is not None:
                    return frame
                try:
                    chunk = await self._stream.receive(_READ_CHUNK)
                except anyio.EndOfStream:
                    if self._in_a_frame():
                        raise ConnectionLostError(
                            f"{self.peer} closed the link in the middle of a frame"
                        ) from None
                    raise
                except anyio.ClosedResourceError:
                    raise ConnectionLostError(f"link to {self.peer} is closed") from None
                except (anyio.BrokenResourceError, OSError) as exc:
                    raise ConnectionLostError(f"link to {self.peer} broke: {describe(exc)}") from exc
                self._add(chunk)

    async def _next_frame(self) -> bytes | None:
        """:meth:`_take_frame`; a frame announced too large resets the link."""
        try:
            return self._take_frame()
        except MessageTooLargeError:
            self._clear_frames()
            await self.abort()
            raise

    async def drop(self) -> None:
        """Reset the link at once: it is dead, so there is no peer to wait for."""
        await self.abort()

    async def aclose(self) -> None:
        """Close in an orderly way: send FIN, give the peer a moment to close too, then release.

        Waiting for the peer's own close keeps the kernel from answering data that is
        still arriving with a reset, which would discard the last frames we sent.
        """
        if self._released:
            return
        try:
            if not self._closed:
                self._closed = True
                with anyio.move_on_after(_CLOSE_LINGER):
                    await self._linger()
        finally:
            self._closed = True
            self._released = True
            await anyio.aclose_forcefully(self._stream)

    async def _linger(self) -> None:
        try:
            async with self._send_lock:
                await self._raw.send_eof()
            if self._receive_lock.locked():  # another task reads; it will see the close
                return
            async with self._receive_lock:
                while True:
                    await self._raw.receive(_READ_CHUNK)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    async def abort(self) -> None:
        """Reset the link at once (RST), as a dying process would; the peer sees ``ConnectionLostError``."""
        self._mark_aborted()
        self._closed = True
        await self.aclose()

    def _mark_aborted(self) -> None:
        """Make the coming close a reset (SO_LINGER 0) instead of an orderly FIN."""
        if self._aborted or self._released:
            return
        self._aborted = True
        try:
            sock = self._raw.extra(SocketAttribute.raw_socket)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:  # already closed
            pass


def _coalesce(frames: list[bytes]) -> list[bytes]:
    """The writes that carry ``frames`` with their headers: small frames share one write,
    a large one goes out after its header without being copied."""
    writes: list[bytes] = []
    pending: list[bytes] = []
    for frame in frames:
        header = _HEADER.pack(len(frame))
        if len(frame) <= _COALESCE_LIMIT:
            pending.append(header)
            pending.append(frame)
            continue
        pending.append(header)
        writes.append(b"".join(pending))
        writes.append(frame)
        pending = []
    if pending:
        writes.append(b"".join(pending))
    return writes


_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY = 0.1  # seconds


class TcpListener(Listener):
    """Accepts TCP links; ``aclose()`` resets every link still open."""

    def __init__(
        self,
        listener: SocketListener | MultiListener[SocketStream],
        options: LinkOptions,
        ssl_context: ssl.SSLContext | None,
        tuning: SocketTuning,
    ) -> None:
        self.port = listener.extra(SocketAttribute.local_port)
        self._listener = listener
        self._sockets: list[SocketListener] = (
            list(listener.listeners) if isinstance(listener, MultiListener) else [listener]  # type: ignore[arg-type]
        )
        self._options = options
        self._ssl_context = ssl_context
        self._tuning = tuning
        self._links: set[TcpConnection | LoopConnection] = set()
        self._handshaking = OldestOut(options.max_pending_handshakes)  # links in their TLS and greeting
        self._quiet = Quieter(logger)
        self._task_group: TaskGroup | None = None
        self._closed = False

    async def serve(self, handler: ConnectionHandler) -> None:
        if self._closed:
            return
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                for sockets in self._sockets:
                    tg.start_soon(self._accept, sockets, handler, tg)
        finally:
            self._task_group = None
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def _accept(self, sockets: SocketListener, handler: ConnectionHandler, tg: TaskGroup) -> None:
        # Not SocketListener.accept(): on asyncio, an accept cancelled in the loop turn its socket
        # became readable is still completed, into the cancelled future: the connection is lost and
        # the loop reports InvalidStateError (bpo-41317). A wait for readability can be cancelled at
        # any moment, and the accept itself does not wait.
        listening = sockets.extra(SocketAttribute.raw_socket)
        while True:
            try:
                await anyio.wait_readable(listening)
                accepted, address = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue  # taken by another process sharing the socket, or reset while queued
            except OSError as exc:
                if self._closed:
                    return
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                # Out of descriptors or buffers: the links already open go on; new ones are
                # refused by the kernel's backlog until some close (as trio's serve_listeners does).
                self._quiet.log(logging.WARNING, "", "resources", "cannot accept tcp links on port %d: %s; "
                                "trying again in %g s", self.port, exc.strerror, _ACCEPT_RETRY)
                await anyio.sleep(_ACCEPT_RETRY)
                continue
            except anyio.ClosedResourceError:
                if self._closed:
                    return
                raise
            tg.start_soon(self._run_link, handler, accepted, address)

    async def _run_link(self, handler: ConnectionHandler, accepted: socket.socket, address: object) -> None:
        peer = _format_peer(address)
        connection: TcpConnection | LoopConnection | None = None
        try:
            self._tuning.apply(accepted)
            with anyio.fail_after(self._options.handshake_timeout), self._handshaking.slot():
                connection = await self._handshake(accepted, peer)
            if connection is None and not self._closed:  # its slot went to a newer link
                self._quiet.log(logging.INFO, peer, "pending", "closed a tcp link from %s in its handshake: more "
                                "than max_pending_handshakes (%d) waited", peer, self._options.max_pending_handshakes)
        except TimeoutError:
            self._quiet.log(logging.INFO, peer, "timeout", "closed a tcp link from %s: no handshake within "
                            "handshake_timeout (%g s)", peer, self._options.handshake_timeout)
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream, ProtocolError) as exc:
            self._quiet.log(logging.INFO, peer, type(exc).__name__, "refused a tcp link from %s: %s", peer,
                            describe(exc))
        if connection is None:
            return  # _handshake released the socket
        self._links.add(connection)
        try:
            await handler(connection)
        except (ConnectionLostError, anyio.EndOfStream) as exc:
            logger.debug("tcp link from %s ended: %s", peer, describe(exc))
        except Exception:
            logger.exception("the handler of the tcp link from %s raised", peer)
        finally:
            self._links.discard(connection)
            if self._closed:
                await connection.abort()
            else:
                await connection.aclose()

    async def _handshake(self, accepted: socket.socket, peer: str) -> TcpConnection | LoopConnection:
        """The link on an accepted socket, once greetings (and TLS) are exchanged; the socket is
        released when that fails."""
        if self._ssl_context is None and sniffio.current_async_library() == "asyncio":
            fast = await LoopConnection.accepted(accepted, peer, self._options.max_message_size)
            await fast.greet()
            return fast
        try:
            raw = await SocketStream.from_socket(accepted)
        except BaseException:
            accepted.close()
            raise
        try:
            stream: ByteStream = raw
            if self._ssl_context is not None:
                stream = await TLSStream.wrap(
                    raw, server_side=True, ssl_context=self._ssl_context, standard_compatible=False
                )
            await _exchange_greeting(stream)
        except BaseException:
            await anyio.aclose_forcefully(raw)
            raise
        return TcpConnection(stream, raw, peer, self._options.max_message_size)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for link in self._links:  # every close from here on is a reset
            link._mark_aborted()
        for sockets in self._sockets:  # ends the accepts' waits before the descriptors go
            anyio.notify_closing(sockets.extra(SocketAttribute.raw_socket))
        await self._listener.aclose()
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
        for link in list(self._links):
            await link.abort()


class TcpTransport(Transport):
    """Length-prefixed frames over TCP, with optional TLS; runs under asyncio and trio.

    ``tls`` applies to every link unless ``LinkOptions.tls`` names other material.
    The keepalive settings are described by :class:`SocketTuning`.
    """

    name = "tcp"
    backends = ("asyncio", "trio")

    def __init__(
        self,
        *,
        tls: TLSConfig | None = None,
        keepalive_idle: float = 20.0,
        keepalive_interval: float = 3.0,
        keepalive_count: int = 3,
        user_timeout: float = 20.0,
    ) -> None:
        for parameter, value in (
            ("keepalive_idle", keepalive_idle),
            ("keepalive_interval", keepalive_interval),
            ("keepalive_count", keepalive_count),
            ("user_timeout", user_timeout),
        ):
            if not value > 0:
                raise ConfigurationError(f"{parameter} ({value}) must be greater than 0")
        self.tls = tls
        self.tuning = SocketTuning(
            keepalive_idle=max(1, round(keepalive_idle)),
            keepalive_interval=max(1, round(keepalive_interval)),
            keepalive_count=int(keepalive_count),
            user_timeout=float(user_timeout),
        )

    async def wait_reachable(self, address: Address, options: LinkOptions) -> None:
        await wait_until_listening(address)

    async def connect(self, address: Address, options: LinkOptions) -> Connection:
        tls = options.tls if options.tls is not None else self.tls
        context = client_ssl_context(tls) if tls is not None else None
        target = f"tcp://{address}"
        stage = "connect"
        try:
            with anyio.fail_after(options.connect_timeout):
                if context is None and sniffio.current_async_library() == "asyncio":
                    fast = await LoopConnection.dial(address.host, address.port, target, options.max_message_size)
                    try:
                        self.tuning.apply(fast.extra(SocketAttribute.raw_socket))
                        stage = "greeting"
                        await fast.greet()
                    except BaseException:
                        await fast.abort()
                        raise
                    return fast
                raw = await anyio.connect_tcp(address.host, address.port)
                try:
                    self.tuning.apply(raw.extra(SocketAttribute.raw_socket))
                    stream: ByteStream = raw
                    stage = "greeting"
                    if context is not None:
                        assert tls is not None
                        stage = "TLS handshake"
                        stream = await TLSStream.wrap(
                            raw,
                            hostname=tls.server_hostname or address.host,
                            ssl_context=context,
                            standard_compatible=False,
                        )
                        stage = "TLS greeting"  # TLS 1.3 reports a refused client certificate here
                    await _exchange_greeting(stream)
                except BaseException:
                    await anyio.aclose_forcefully(raw)
                    raise
        except TimeoutError:
            raise GatewayUnavailableError(
                f"{target}: {stage}: no answer within connect_timeout ({options.connect_timeout} s)"
            ) from None
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream, ProtocolError) as exc:
            cause = explain_error(exc) if context is not None else None
            if cause is None and stage == "TLS greeting":  # TLS 1.3: a refused client certificate shows here
                cause = f"the gateway closed the link right after the TLS handshake; most likely {CLIENT_CERT}"
            if context is None and stage == "greeting" and await speaks_tls(address.host, address.port):
                cause = PLAIN_TO_TLS
            reason = f"{cause} ({describe(exc)})" if cause else describe(exc)
            raise GatewayUnavailableError(f"{target}: {stage} failed: {reason}") from exc
        return TcpConnection(stream, raw, target, options.max_message_size)

    async def listen(self, host: str, port: int, options: LinkOptions) -> Listener:
        tls = options.tls if options.tls is not None else self.tls
        context = server_ssl_context(tls) if tls is not None else None
        listener = await anyio.create_tcp_listener(local_host=host or None, local_port=port)
        return TcpListener(listener, options, context, self.tuning)


def server_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """The gateway side: present ``cert``/``key``; with ``require_client_cert``, verify clients with ``ca``."""
    if not tls.cert or not tls.key:
        raise ConfigurationError("tls: a listening tcp transport needs both cert and key")
    if tls.require_client_cert and not tls.ca:
        raise ConfigurationError("tls: require_client_cert needs ca to verify client certificates")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load(context.load_cert_chain, tls.cert, tls.key)
    if tls.require_client_cert:
        _load(context.load_verify_locations, tls.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """The dialing side: verify the gateway with ``ca`` (the system store without it); present ``cert`` if set."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls.ca:
        _load(context.load_verify_locations, tls.ca)
    if tls.cert:
        _load(context.load_cert_chain, tls.cert, tls.key)
    return context


def _load(method: object, *paths: str | None) -> None:
    try:
        method(*paths)  # type: ignore[operator]
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"tls: cannot load {', '.join(p for p in paths if p)}: {exc}") from exc


async def _exchange_greeting(stream: ByteStream) -> None:
    await stream.send(GREETING)
    received = b""
    while len(received) < len(GREETING):
        try:
            received += await stream.receive(len(GREETING) - len(received))
        except anyio.EndOfStream:
            raise ProtocolError(GREETING_CUT) from None
    check_greeting(received)


def _format_peer(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)

