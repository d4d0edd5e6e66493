"""Payload codecs, declared on the wire as a chain (applied left to right on encode).

Only the lossless ``f32`` codec (raw little-endian float32) exists so far; the
registry is the seam for compression codecs.
"""

from __future__ import annotations

import numpy as np

from tsfl.wire.envelope import WireError

F32 = np.dtype("<f4")
KNOWN_CODECS = ("f32",)


def encode_f32(vec: np.ndarray) -> memoryview:
    """The vector's bytes (no copy when it is already contiguous little-endian float32)."""
    return memoryview(np.ascontiguousarray(vec, dtype=F32)).cast("B")


def decode_f32(payload: bytes | memoryview, expected_size: int) -> np.ndarray:
    """A read-only float32 view of the payload (no copy)."""
    if len(payload) != expected_size * 4:
        raise WireError("shape", f"payload has {len(payload)} bytes; the layout needs "
                                 f"{expected_size} float32 values ({expected_size * 4} bytes)")
    return np.frombuffer(payload, dtype=F32)


def check_chain(chain: list[str]) -> tuple[str, ...]:
    if not chain:
        raise WireError("codec", "empty codec chain")
    unknown = [c for c in chain if c not in KNOWN_CODECS]
    if unknown:
        raise WireError("codec", f"unknown codec(s) {unknown}; known: {list(KNOWN_CODECS)}")
    if chain != ["f32"]:
        raise WireError("codec", f"unsupported codec chain {chain}")
    return tuple(chain)
