"""msgpack envelopes: ``{"v": version, "kind": kind, ...}`` with size limits."""

from __future__ import annotations

from typing import Any

import msgpack

WIRE_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 2 * 1024**3  # 2 GiB: the largest model the platform moves


class WireError(ValueError):
    """A message that cannot be accepted; ``code`` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def pack(kind: str, body: dict[str, Any]) -> bytes:
    return msgpack.packb({"v": WIRE_VERSION, "kind": kind, **body}, use_bin_type=True)


def unpack(data: bytes | memoryview, kind: str,
           max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Decode an envelope of the expected ``kind``; never trusts the sender."""
    if len(data) > max_bytes:
        raise WireError("too_large", f"message of {len(data)} bytes exceeds limit {max_bytes}")
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=True,
            max_bin_len=max_bytes, max_str_len=1 << 20, max_array_len=1 << 20,
            max_map_len=1 << 16, max_ext_len=0,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise WireError("malformed", f"not a valid msgpack envelope: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError("malformed", "envelope is not a map")
    version = obj.get("v")
    if version != WIRE_VERSION:
        raise WireError("version", f"unsupported schema version {version!r} "
                                   f"(this build speaks {WIRE_VERSION})")
    if obj.get("kind") != kind:
        raise WireError("kind", f"expected a {kind!r} message, got {obj.get('kind')!r}")
    return obj


def require(obj: dict[str, Any], field: str, typ: type | tuple[type, ...]) -> Any:
    """Fetch a required field with a type check (bool is not an int here)."""
    if field not in obj:
        raise WireError("malformed", f"missing field {field!r}")
    value = obj[field]
    if isinstance(value, bool) and typ is not bool and (typ is int or (isinstance(typ, tuple)
                                                                      and bool not in typ)):
        raise WireError("malformed", f"field {field!r} must be {typ}, got bool")
    if not isinstance(value, typ):
        raise WireError("malformed", f"field {field!r} has type {type(value).__name__}")
    return value
