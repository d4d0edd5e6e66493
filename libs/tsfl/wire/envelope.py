"""Envelopes on the wire.

Control messages are a msgpack map ``{"v": version, "kind": kind, ...}``.

Messages that carry a tensor payload are *frames*, so the payload is never copied
on decode (numpy views the received buffer):

    b"TSF1" | u32 header length (LE) | msgpack header | zero padding | payload bytes

The padding puts the payload at a multiple of 64 bytes from the frame's start, so the
numpy view of it is aligned (BLAS would otherwise copy it). The header holds ``v``,
``kind``, the payload's length and its XXH3-64 checksum.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import xxhash

from tsfl.errors import TsflError

#: what a decoder reads: a frame as received (a bus record may be a reassembled
#: bytearray), or a zero-copy view of one
Frame = bytes | bytearray | memoryview

WIRE_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 2 * 1024**3 + 1024**2  # a 2 GiB model plus its header
MAGIC = b"TSF1"
MAX_HEADER_BYTES = 1 << 20
_PREFIX = struct.Struct("<4sI")
PAYLOAD_ALIGN = 64


def _payload_offset(head_len: int) -> int:
    end = _PREFIX.size + head_len
    return -(-end // PAYLOAD_ALIGN) * PAYLOAD_ALIGN


class WireError(TsflError, ValueError):
    """A message that cannot be accepted; ``code`` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def checksum(payload: bytes | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(payload)


def _loads(data: Frame, max_bytes: int) -> Any:
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, max_bin_len=max_bytes,
            max_str_len=1 << 20, max_array_len=1 << 20, max_map_len=1 << 16, max_ext_len=0)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise WireError("malformed", f"not a valid msgpack envelope: {exc}") from None


def _check_head(obj: Any, kind: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise WireError("malformed", "envelope is not a map")
    version = obj.get("v")
    if version != WIRE_VERSION:
        raise WireError("version", f"unsupported schema version {version!r} "
                                   f"(this build speaks {WIRE_VERSION})")
    if obj.get("kind") != kind:
        raise WireError("kind", f"expected a {kind!r} message, got {obj.get('kind')!r}")
    return obj


# -- control messages ------------------------------------------------------------------------
def pack(kind: str, body: dict[str, Any]) -> bytes:
    return msgpack.packb({"v": WIRE_VERSION, "kind": kind, **body}, use_bin_type=True)


def unpack(data: Frame, kind: str,
           max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Decode a control envelope of the expected ``kind``; never trusts the sender."""
    if len(data) > max_bytes:
        raise WireError("too_large", f"message of {len(data)} bytes exceeds limit {max_bytes}")
    return _check_head(_loads(data, max_bytes), kind)


# -- frames (header + raw payload) -----------------------------------------------------------
def pack_frame(kind: str, header: dict[str, Any], payload: bytes | memoryview) -> bytes:
    head = msgpack.packb({"v": WIRE_VERSION, "kind": kind, **header, "payload_len": len(payload),
                          "xxh3": checksum(payload)}, use_bin_type=True)
    pad = _payload_offset(len(head)) - _PREFIX.size - len(head)
    return b"".join((_PREFIX.pack(MAGIC, len(head)), head, bytes(pad), payload))


def unpack_frame(data: Frame, kind: str,
                 max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 verify: bool = True) -> tuple[dict[str, Any], memoryview]:
    """Split and check a frame; the payload comes back as a zero-copy memoryview."""
    if len(data) > max_bytes:
        raise WireError("too_large", f"message of {len(data)} bytes exceeds limit {max_bytes}")
    if len(data) < _PREFIX.size:
        raise WireError("malformed", "message is shorter than a frame prefix")
    view = memoryview(data)
    magic, head_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise WireError("malformed", "not a tsfl frame (bad magic)")
    start = _payload_offset(head_len)
    if head_len > MAX_HEADER_BYTES or start > len(data):
        raise WireError("malformed", f"header length {head_len} is out of bounds")
    head = _check_head(_loads(view[_PREFIX.size:_PREFIX.size + head_len], MAX_HEADER_BYTES),
                       kind)
    payload = view[start:]
    declared = require(head, "payload_len", int)
    if declared != len(payload):
        raise WireError("malformed", f"payload has {len(payload)} bytes, header says {declared}")
    if verify and checksum(payload) != require(head, "xxh3", int):
        raise WireError("checksum", "payload checksum mismatch")
    return head, payload


def require(obj: dict[str, Any], field: str, typ: type | tuple[type, ...]) -> Any:
    """Fetch a required field with a type check (a bool is not an int here)."""
    if field not in obj:
        raise WireError("malformed", f"missing field {field!r}")
    value = obj[field]
    if isinstance(value, bool) and not (typ is bool or (isinstance(typ, tuple) and bool in typ)):
        raise WireError("malformed", f"field {field!r} must not be a boolean")
    if not isinstance(value, typ):
        raise WireError("malformed", f"field {field!r} has type {type(value).__name__}")
    return value
