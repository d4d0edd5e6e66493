"""Payload codecs on the wire: the chain a frame declares, its parameters, its values.

The codecs themselves live in :mod:`tsfl.compress`; this module turns their errors into
:class:`WireError` and keeps plain float32 zero-copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tsfl.compress import CodecChain, CodecError, decode_vector
from tsfl.wire.envelope import WireError

F32 = np.dtype("<f4")


def encode_f32(vec: np.ndarray) -> memoryview:
    """The vector's bytes (no copy when it is already contiguous little-endian float32)."""
    return np.ascontiguousarray(vec, dtype=F32).data.cast("B")


def decode_f32(payload: bytes | memoryview, expected_size: int) -> np.ndarray:
    """A read-only float32 view of the payload (no copy)."""
    if len(payload) != expected_size * 4:
        raise WireError("shape", f"payload has {len(payload)} bytes; the layout needs "
                                 f"{expected_size} float32 values ({expected_size * 4} bytes)")
    return np.frombuffer(payload, dtype=F32)


def check_chain(chain: list[Any]) -> CodecChain:
    try:
        return CodecChain.parse(chain)
    except CodecError as exc:
        raise WireError(exc.code, str(exc)) from None


def decode_payload(chain: CodecChain, params: Any, payload: bytes | memoryview,
                   size: int) -> np.ndarray:
    """The dense float32 vector a payload encodes (a view for plain float32)."""
    if chain.is_raw:
        return decode_f32(payload, size)
    try:
        return decode_vector(chain, params, payload, size)
    except CodecError as exc:
        raise WireError(exc.code, str(exc)) from None
