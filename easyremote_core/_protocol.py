"""The wire protocol: envelope encoding, version checks, payload pickling, error mapping."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pickle
import struct
import threading
import traceback
from typing import Any

import anyio
from google.protobuf.message import DecodeError

from . import _errors as errors
from ._proto import envelope_pb2 as pb

PROTOCOL_VERSION = 1
Envelope = pb.Envelope
ErrorCode = pb.Error.Code

__all__ = ["PROTOCOL_VERSION", "Envelope", "decode", "encode", "pb"]


#: A payload (pickled arguments, result or stream item) carried after its envelope instead
#: of inside it, so that the gateway routes a call by its small envelope and forwards the
#: payload's bytes untouched, and nobody copies them to build or parse an envelope.
Attachment = bytes | memoryview
#: Payloads from this size on travel as attachments; smaller ones stay inside the envelope.
ATTACH_FROM = 64 * 1024
#: A frame with an attachment: this byte (never the first of a serialized envelope: it would
#: be field 0), the envelope's length (4 bytes, big-endian), the envelope, the attachment.
_ATTACHED = 0x02
_HEAD = struct.Struct(">BI")
#: The envelope bodies whose payload may be attached.
ATTACHABLE = frozenset({"call", "result", "item"})


def encode(envelope: pb.Envelope, attachment: Attachment | None = None) -> bytes:
    """One frame: the envelope, and after it the attachment if there is one."""
    envelope.protocol_version = PROTOCOL_VERSION
    head = envelope.SerializeToString()
    if attachment is None:
        return head
    return b"".join((_HEAD.pack(_ATTACHED, len(head)), head, attachment))


def decode(frame: bytes) -> pb.Envelope:
    """Parse a frame that carries no attachment (see :func:`decode_frame`)."""
    envelope, attachment = decode_frame(frame)
    if attachment is not None:
        raise errors.ProtocolError("unexpected attachment")
    return envelope


def decode_frame(frame: bytes) -> tuple[pb.Envelope, memoryview | None]:
    """Parse one frame into its envelope and its attachment (a view of ``frame``, not a copy);
    a malformed frame or another protocol version is a ``ProtocolError``."""
    attachment = None
    head: bytes | memoryview = frame
    if frame[:1] == b"\x02":
        if len(frame) < _HEAD.size:
            raise errors.ProtocolError(f"malformed frame ({len(frame)} bytes): it ends inside its header")
        _, size = _HEAD.unpack_from(frame)
        end = _HEAD.size + size
        if end > len(frame):
            raise errors.ProtocolError(f"malformed frame ({len(frame)} bytes): its envelope ({size} bytes) "
                                       "runs past its end")
        view = memoryview(frame)
        head, attachment = view[_HEAD.size:end], view[end:]
    envelope = pb.Envelope()
    try:
        envelope.ParseFromString(head)  # type: ignore[arg-type]  # upb parses any buffer
    except DecodeError as exc:
        raise errors.ProtocolError(f"malformed frame ({len(frame)} bytes): {exc}") from None
    if envelope.protocol_version != PROTOCOL_VERSION:
        raise errors.ProtocolError(
            f"peer speaks protocol version {envelope.protocol_version}, this side speaks {PROTOCOL_VERSION}"
        )
    kind = envelope.WhichOneof("body")
    if kind is None:
        raise errors.ProtocolError("frame carries no message")
    if attachment is not None and (kind not in ATTACHABLE or getattr(envelope, kind).payload):
        raise errors.ProtocolError(f"a {kind} frame cannot carry an attachment"
                                   + (" beside a payload of its own" if kind in ATTACHABLE else ""))
    return envelope, attachment


def whole_frame(attachment: Attachment) -> bytes | None:
    """The frame an attachment from :func:`decode_frame` came in, to forward it as it came."""
    frame = attachment.obj if isinstance(attachment, memoryview) else None
    return frame if isinstance(frame, bytes) else None


def split_payload(payload: bytes) -> tuple[bytes, Attachment | None]:
    """(what goes in the envelope, what is attached): a large payload travels attached."""
    if len(payload) >= ATTACH_FROM:
        return b"", payload
    return payload, None


def payload_of(body: pb.CallRequest | pb.Result | pb.StreamItem, attachment: Attachment | None) -> Attachment:
    """A call's, result's or item's payload, wherever it travelled."""
    return attachment if attachment is not None else body.payload


# --- payloads: the client and node pickle, the gateway never opens them -------------------


def dump_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    try:
        return pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # pickling runs arbitrary __reduce__ code
        raise TypeError(f"arguments cannot be pickled: {type(exc).__name__}: {exc}") from exc


def load_arguments(payload: Attachment) -> tuple[tuple[Any, ...], dict[str, Any]]:
    value = pickle.loads(payload)
    if not (isinstance(value, tuple) and len(value) == 2
            and isinstance(value[0], tuple) and isinstance(value[1], dict)):
        raise TypeError("payload is not an (args, kwargs) pair")
    return value


def dump_value(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def load_value(payload: Attachment) -> Any:
    return pickle.loads(payload)


# --- errors ------------------------------------------------------------------------------

_ERROR_TYPES: dict[int, type[errors.EasyRemoteError]] = {
    ErrorCode.CODE_NO_NODE: errors.NoNodeAvailableError,
    ErrorCode.CODE_NODE_LOST: errors.NodeLostError,
    ErrorCode.CODE_NODE_BUSY: errors.NodeBusyError,
    ErrorCode.CODE_TIMEOUT: errors.CallTimeoutError,
    ErrorCode.CODE_TOO_LARGE: errors.MessageTooLargeError,
    ErrorCode.CODE_PROTOCOL: errors.ProtocolError,
    ErrorCode.CODE_UNAVAILABLE: errors.GatewayUnavailableError,
    ErrorCode.CODE_CANCELLED: errors.ConnectionLostError,
    ErrorCode.CODE_STREAMING: errors.StreamingFunctionError,
    ErrorCode.CODE_STOPPING: errors.NoNodeAvailableError,
    ErrorCode.CODE_FORBIDDEN: errors.AuthenticationError,
    ErrorCode.CODE_UNKNOWN_CALL: errors.ConnectionLostError,
}

#: What a caller reads when an Error frame carries no message of its own.
_DEFAULT_MESSAGES: dict[int, str] = {
    ErrorCode.CODE_UNSPECIFIED: "the call failed and the gateway gave no reason",
    ErrorCode.CODE_REMOTE_EXCEPTION: "the remote function raised",
    ErrorCode.CODE_NO_NODE: "no node serves the function",
    ErrorCode.CODE_NODE_LOST: "the node running the call was lost; the call may or may not have run",
    ErrorCode.CODE_NODE_BUSY: "the node's queue is full (max_queue_size)",
    ErrorCode.CODE_TIMEOUT: "the call did not finish within its timeout and was cancelled",
    ErrorCode.CODE_BAD_ARGUMENTS: "the node could not unpickle the arguments",
    ErrorCode.CODE_BAD_RESULT: "the node could not pickle the result",
    ErrorCode.CODE_TOO_LARGE: "a frame was larger than max_message_size",
    ErrorCode.CODE_CANCELLED: "the call was cancelled",
    ErrorCode.CODE_PROTOCOL: "the peer sent a malformed frame",
    ErrorCode.CODE_UNAVAILABLE: "the gateway is unavailable",
    ErrorCode.CODE_STREAMING: "the function is a generator: iterate over stream() instead of execute()",
    ErrorCode.CODE_STOPPING: "the node is stopping and took no new call",
    ErrorCode.CODE_FORBIDDEN: "the caller's credential does not allow this",
    ErrorCode.CODE_UNKNOWN_CALL: "the node never received the call",
}


def error_frame(call_id: str, code: pb.Error.Code, message: str, *, node_id: str = "") -> pb.Envelope:
    return pb.Envelope(error=pb.Error(call_id=call_id, code=code, message=message, node_id=node_id))


def exception_frame(call_id: str, exc: BaseException, *, code: pb.Error.Code = ErrorCode.CODE_REMOTE_EXCEPTION,
                    node_id: str = "") -> pb.Envelope:
    """An Error frame that carries a Python exception's type, message and traceback text."""
    kind = type(exc)
    type_name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    text = "".join(user_traceback(exc).format())
    return pb.Envelope(
        error=pb.Error(
            call_id=call_id, code=code, message=str(exc), remote_type=type_name,
            remote_traceback=text, node_id=node_id,
        )
    )


#: Frames from these folders are EasyRemote's and its libraries' machinery, not the user's code.
_MACHINERY = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (__file__, os.path.join(os.path.dirname(__file__), "..", "easyremote", "_"),
                 anyio.__file__, asyncio.__file__, concurrent.futures.__file__)
) + (os.path.abspath(threading.__file__),)


def user_traceback(exc: BaseException) -> traceback.TracebackException:
    """``exc``'s traceback with only the user's own frames, in its chained exceptions too."""
    shown = traceback.TracebackException.from_exception(exc)
    seen: set[int] = set()
    todo = [shown]
    while todo:
        part = todo.pop()
        if id(part) in seen:
            continue
        seen.add(id(part))
        part.stack = traceback.StackSummary.from_list(
            [frame for frame in part.stack if not os.path.abspath(frame.filename).startswith(_MACHINERY)])
        todo.extend(p for p in (part.__cause__, part.__context__) if p is not None)
        todo.extend(getattr(part, "exceptions", None) or ())
    return shown


def error_from_frame(error: pb.Error) -> errors.EasyRemoteError:
    """The exception a caller sees for an Error frame; its message is never empty."""
    message = error.message or _DEFAULT_MESSAGES.get(
        error.code, f"the call failed with error code {error.code}, which this version does not know")
    if error.code in (ErrorCode.CODE_REMOTE_EXCEPTION, ErrorCode.CODE_BAD_ARGUMENTS, ErrorCode.CODE_BAD_RESULT):
        return errors.RemoteExecutionError(
            error.remote_type or "Exception", error.message, error.remote_traceback, error.node_id
        )
    return _ERROR_TYPES.get(error.code, errors.EasyRemoteError)(message)


def code_name(code: int) -> str:
    """``CODE_NODE_LOST`` → ``node_lost``."""
    return ErrorCode.Name(code).removeprefix("CODE_").lower()
