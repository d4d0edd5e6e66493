"""Lossless model deltas for the downlink: new ⊕ old, byte-shuffled, then zstd.

Consecutive global models share signs, exponents and high mantissa bits, so the XOR of
their float32 bit patterns is mostly zero bytes; grouping the i-th byte of every value
together (the "shuffle" filter of Blosc/HDF5) turns those into long runs that zstd
compresses well. Exact: the device rebuilds the new model bit for bit.
"""

from __future__ import annotations

import numpy as np

from tsfl.compress import lossless
from tsfl.compress.errors import CodecError

XOR_CHAIN = ("xor", "zstd")


def encode_xor_delta(new: np.ndarray, old: np.ndarray) -> bytes:
    if new.shape != old.shape:
        raise CodecError("shape", "a delta needs two models of one layout")
    x = np.bitwise_xor(np.ascontiguousarray(new, "<f4").view("<u4"),
                       np.ascontiguousarray(old, "<f4").view("<u4"))
    shuffled = np.ascontiguousarray(x.view(np.uint8).reshape(-1, 4).T)
    return lossless.compress("zstd", shuffled.data.cast("B"))


def decode_xor_delta(payload: bytes | memoryview, old: np.ndarray) -> np.ndarray:
    raw = lossless.decompress("zstd", payload, old.size * 4)
    x = np.frombuffer(raw, np.uint8).reshape(4, -1).T.copy().view("<u4").reshape(-1)
    return np.bitwise_xor(x, np.ascontiguousarray(old, "<f4").view("<u4")).view("<f4")
