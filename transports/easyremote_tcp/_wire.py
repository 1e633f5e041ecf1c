"""What both tcp connections share: the frame format (a 4-byte big-endian length, then the frame),
how incoming bytes become frames, and how a failure is described."""

from __future__ import annotations

import os
import socket
import ssl
import struct
from collections.abc import Iterable

from easyremote_core import MessageTooLargeError, ProtocolError

# Sent by both ends right after the TCP (and TLS) handshake. The client's connect()
# returns only once the gateway's greeting arrived, so a gateway that refused the
# link after accepting it (a required client certificate under TLS 1.3, a port that
# is not an EasyRemote gateway, a proxy with nothing behind it) is reported by
# connect() as GatewayUnavailableError rather than by the first receive.
GREETING = b"easyremote-tcp/1"
_HEADER = struct.Struct(">I")
_READ_CHUNK = 256 * 1024  # bytes asked from the socket per read
_COALESCE_LIMIT = 64 * 1024  # frames up to this size go out in one write with their header
_SEND_SLICE = 256 * 1024  # a larger write goes out in slices of this size
_LARGE = 1024 * 1024  # frames from this size on are gathered in a buffer of their own
GREETING_CUT = "the peer closed the link during the greeting"


def check_greeting(received: bytes) -> None:
    """Raise ``ProtocolError`` unless ``received`` (the peer's first bytes) is our greeting."""
    if received != GREETING:
        raise ProtocolError(f"the peer is not an EasyRemote tcp endpoint (it sent {received!r})")


class FrameParser:
    """Turns the bytes read from a socket into whole frames (a mixin of the tcp connections).

    Needs ``peer`` and ``_max`` (max_message_size) on the instance.
    """

    peer: str
    _max: int

    def _init_frames(self) -> None:
        self._buffer = bytearray()
        self._large: bytearray | None = None  # a large frame being gathered (see _take_frame)
        self._large_filled = 0

    def _in_a_frame(self) -> bool:
        """Part of a frame has been read."""
        return bool(self._buffer) or self._large is not None

    def _clear_frames(self) -> None:
        self._buffer.clear()
        self._large = None

    def _take_frame(self) -> bytes | None:
        """The next whole frame from the buffer, if it is all there; nothing is consumed otherwise.

        A frame larger than ``_LARGE`` is gathered apart, in a buffer of its own size, so that
        its bytes are copied once on the way in instead of each time the buffer grows.
        """
        large = self._large
        if large is not None:
            if self._large_filled < len(large):
                return None
            self._large = None
            return bytes(large)
        if len(self._buffer) < _HEADER.size:
            return None
        (size,) = _HEADER.unpack_from(self._buffer)
        if size > self._max:
            raise MessageTooLargeError(
                f"{self.peer} announced a frame of {size} bytes, above max_message_size ({self._max}); "
                "the link is closed"
            )
        end = _HEADER.size + size
        if len(self._buffer) < end:
            if size >= _LARGE:
                self._large = bytearray(size)
                self._large_filled = len(self._buffer) - _HEADER.size
                with memoryview(self._buffer) as view:
                    self._large[: self._large_filled] = view[_HEADER.size :]
                self._buffer.clear()
            return None
        with memoryview(self._buffer) as view:
            frame = bytes(view[_HEADER.size : end])
        del self._buffer[:end]
        return frame

    def _add(self, chunk: bytes) -> None:
        """Bytes read from the socket: to the large frame being gathered, the rest to the buffer."""
        large = self._large
        if large is None:
            self._buffer += chunk
            return
        room = len(large) - self._large_filled
        taken = min(room, len(chunk))
        large[self._large_filled : self._large_filled + taken] = memoryview(chunk)[:taken]
        self._large_filled += taken
        if taken < len(chunk):
            self._buffer += memoryview(chunk)[taken:]


def describe(exc: BaseException) -> str:
    """A short reason for a failure, taken from the innermost OS error when there is one."""
    for cause in _chain(exc):
        if isinstance(cause, (ssl.SSLWantReadError, ssl.SSLWantWriteError)):
            continue  # TLS waiting for bytes: the cause is whatever happened to the socket
        if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
            return cause.verify_message.rstrip(".")
        if isinstance(cause, ssl.SSLError) and cause.reason:
            return cause.reason.lower().replace("_", " ")
        if isinstance(cause, OSError) and not isinstance(cause, socket.gaierror) and cause.errno:
            return os.strerror(cause.errno).lower()  # asyncio's own text only repeats the address
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
    text = str(exc)
    return text or type(exc).__name__


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return reversed(seen)
