"""Sorted index sets of a sparse vector, in the smallest of four encodings.

``gap8`` / ``gap16`` store the differences between consecutive indices (the first
relative to −1, so every gap is ≥ 1), ``abs32`` the indices themselves, ``bitmap`` one
bit per coordinate. The encoder picks the smallest that can hold the set; the decoder
checks lengths, bounds, order and duplicates before it returns anything.
"""

from __future__ import annotations

import numpy as np

from tsfl.compress.errors import CodecError

INDEX_FORMATS = ("gap8", "gap16", "abs32", "bitmap")
MAX_COORDINATES = 1 << 32


def index_bytes(fmt: str, k: int, n: int) -> int:
    """The exact encoded size of ``k`` indices out of ``n`` in ``fmt``."""
    sizes = {"gap8": k, "gap16": 2 * k, "abs32": 4 * k, "bitmap": (n + 7) // 8}
    if fmt not in sizes:
        raise CodecError("codec", f"unknown index format {fmt!r}; known: {list(INDEX_FORMATS)}")
    return sizes[fmt]


def encode_indices(indices: np.ndarray, n: int) -> tuple[str, bytes]:
    """Encode strictly increasing ``indices`` (int64) in ``[0, n)``."""
    k = int(indices.size)
    if n > MAX_COORDINATES:
        raise CodecError("too_large", f"{n} coordinates; at most {MAX_COORDINATES}")
    max_gap = int(np.diff(indices, prepend=-1).max()) if k else 0
    options = [("abs32", 4 * k), ("bitmap", (n + 7) // 8)]
    if max_gap <= 0xFF:
        options.append(("gap8", k))
    elif max_gap <= 0xFFFF:
        options.append(("gap16", 2 * k))
    fmt = min(options, key=lambda o: o[1])[0]
    if fmt == "gap8":
        return fmt, np.diff(indices, prepend=-1).astype(np.uint8).tobytes()
    if fmt == "gap16":
        return fmt, np.diff(indices, prepend=-1).astype("<u2").tobytes()
    if fmt == "abs32":
        return fmt, indices.astype("<u4").tobytes()
    bits = np.zeros(n, dtype=np.uint8)
    bits[indices] = 1
    return fmt, np.packbits(bits, bitorder="little").tobytes()


def decode_indices(fmt: str, data: bytes | memoryview, k: int, n: int) -> np.ndarray:
    """The strictly increasing int64 indices; a :class:`CodecError` for anything else."""
    if len(data) != index_bytes(fmt, k, n):
        raise CodecError("shape", f"{fmt} index section has {len(data)} bytes, "
                                  f"{index_bytes(fmt, k, n)} expected for k={k} of n={n}")
    if fmt == "bitmap":
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        if bits[n:].any():
            raise CodecError("indices", "bitmap sets bits beyond the vector's length")
        idx = np.flatnonzero(bits[:n])
        if idx.size != k:
            raise CodecError("indices", f"bitmap holds {idx.size} indices, header says {k}")
        return idx
    if fmt == "abs32":
        idx = np.frombuffer(data, "<u4").astype(np.int64)
        if k > 1 and not (np.diff(idx) > 0).all():
            raise CodecError("indices", "indices are not strictly increasing (duplicates?)")
    else:
        gaps = np.frombuffer(data, np.uint8 if fmt == "gap8" else "<u2")
        if k and not gaps.all():
            raise CodecError("indices", "a zero gap: duplicate index")
        idx = np.cumsum(gaps, dtype=np.int64) - 1
    if k and idx[-1] >= n:
        raise CodecError("indices", f"index {int(idx[-1])} is out of bounds for {n} coordinates")
    return idx
