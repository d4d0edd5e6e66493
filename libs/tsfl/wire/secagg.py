"""SecAgg+ stage messages on the wire (gRPC ``SecAggStage``): msgpack maps, checked.

Requests, per stage: ``advertise`` {c, s: 32-byte X25519 public keys, ekh: SHA-256 of
the ML-KEM-768 key (empty without it), sig: the device's Ed25519 signature, cert: its
identity certificate {id, pk, ca, sig}, ek: the 1184-byte ML-KEM-768 key (hybrid mode)};
``share`` {sealed: {neighbour: [KEM ciphertext ‖] AES-GCM blob}}; ``masked`` {y: the
masked vector, ⌈ring_bits/8⌉ little-endian bytes per value — the update, then the
example count and metrics}; ``consistency`` {sig: the signature on the survivor set};
``unmask`` {shares: {client: [b|s, 66-byte big-endian share]}}. Replies: after advertise
{ads: {client: advertisement}, eks: {neighbour: ML-KEM key}}, after share {shares:
{neighbour: blob}}, after masked {survivors}, after consistency {signatures: {neighbour:
sig}}, after unmask {}. Sizes are bounded before anything is allocated.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from tsfl.he.sealed import widen
from tsfl.wire.envelope import WireError

MAX_CLIENTS = 100_000
SHARE_BYTES = 66  # an element of GF(2^521 − 1)


def ring_width(ring_bits: int) -> int:
    return (ring_bits + 7) // 8


def _unpack(data: bytes, max_bytes: int) -> dict[str, Any]:
    if len(data) > max_bytes:
        raise WireError("too_large", f"secagg message of {len(data)} bytes exceeds "
                                     f"{max_bytes}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True,
                              max_bin_len=max_bytes, max_str_len=1024,
                              max_array_len=2 * MAX_CLIENTS, max_map_len=2 * MAX_CLIENTS)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError("malformed", f"unreadable secagg message: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError("malformed", "a secagg message is a map")
    return obj


def encode_request(stage: str, payload: dict[str, Any], ring_bits: int) -> bytes:
    if stage == "masked":
        width = ring_width(ring_bits)
        y = np.ascontiguousarray(payload["y"], dtype="<u8")
        packed = y.view(np.uint8).reshape(-1, 8)[:, :width].tobytes()
        body: dict[str, Any] = {"y": packed}
    elif stage == "unmask":
        body = {"shares": {v: [k, int(x).to_bytes(SHARE_BYTES, "big")]
                           for v, (k, x) in payload["shares"].items()}}
    else:
        body = payload
    return msgpack.packb(body)


def decode_request(stage: str, data: bytes, size: int, ring_bits: int,
                   max_bytes: int) -> dict[str, Any]:
    """The stage's payload as :meth:`SecAggStages.accept` takes it (shapes checked; the
    protocol checks the rest)."""
    obj = _unpack(data, max_bytes)
    if stage == "masked":
        y, width = obj.get("y"), ring_width(ring_bits)
        if not isinstance(y, bytes) or len(y) != size * width:
            raise WireError("shape", f"masked vector must be {size} × {width} bytes")
        return {"y": widen(y, width)}
    if stage == "unmask":
        shares = obj.get("shares")
        if not isinstance(shares, dict):
            raise WireError("malformed", "unmask needs shares")
        out = {}
        for v, entry in shares.items():
            if (not isinstance(entry, list) or len(entry) != 2
                    or not isinstance(entry[1], bytes) or len(entry[1]) != SHARE_BYTES):
                raise WireError("malformed", "an unmask share is [b|s, 66 bytes]")
            out[v] = (entry[0], int.from_bytes(entry[1], "big"))
        return {"shares": out}
    return obj


def encode_reply(stage: str, reply: dict[str, Any]) -> bytes:
    return msgpack.packb(reply)


def _map_of(obj: Any, check: Any) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and check(v)
                                         for k, v in obj.items())


def decode_reply(stage: str, data: bytes, max_bytes: int = 256 * 1024 * 1024
                 ) -> dict[str, Any]:
    obj = _unpack(data, max_bytes)
    if stage == "advertise":
        if not _map_of(obj.get("ads"), lambda a: isinstance(a, dict)) or not _map_of(
                obj.get("eks", {}), lambda b: isinstance(b, bytes)):
            raise WireError("malformed", "advertise reply needs {ads: {client: map}, eks}")
        return {"ads": obj["ads"], "eks": obj.get("eks", {})}
    if stage == "share":
        if not _map_of(obj.get("shares"), lambda b: isinstance(b, bytes)):
            raise WireError("malformed", "share reply needs {neighbour: blob}")
        return {"shares": obj["shares"]}
    if stage == "masked":
        survivors = obj.get("survivors")
        if not isinstance(survivors, list) or not all(isinstance(c, str) for c in survivors):
            raise WireError("malformed", "masked reply needs the survivors")
        return {"survivors": survivors}
    if stage == "consistency":
        if not _map_of(obj.get("signatures"), lambda b: isinstance(b, bytes)):
            raise WireError("malformed", "consistency reply needs {neighbour: signature}")
        return {"signatures": obj["signatures"]}
    return obj
