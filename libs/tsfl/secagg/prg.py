"""Masks: a 32-byte seed expanded by ChaCha20 (a CSPRNG, not a statistical PRNG).

A mask is the ChaCha20 keystream read as little-endian 64-bit words, uniform in
[0, 2^64). Masks are added and subtracted modulo 2^64 and the result reduced modulo the
ring's 2^b once at the end: 2^b divides 2^64, so that is the sum modulo 2^b, and the low
b bits of a uniform word are uniform. The keystream is written straight into a reused
buffer (no per-mask allocation: it would cost more than the cipher).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_NONCE = bytes(16)  # each seed is used for one mask only (seeds are fresh per round)
_ZEROS: dict[int, bytes] = {}


def _zeros(nbytes: int) -> bytes:
    found = _ZEROS.get(nbytes)
    if found is None:
        if len(_ZEROS) > 4:
            _ZEROS.clear()
        found = _ZEROS[nbytes] = bytes(nbytes)
    return found


def fill(seed: bytes, out: np.ndarray) -> np.ndarray:
    """Write the mask of ``seed`` into ``out`` (a C-contiguous little-endian uint64)."""
    if len(seed) != 32:
        raise ValueError("a mask seed is 32 bytes")
    if out.dtype != np.dtype("<u8") or not out.flags.c_contiguous:
        raise ValueError("masks are written into contiguous little-endian uint64 arrays")
    enc = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    enc.update_into(_zeros(out.nbytes), out.view(np.uint8).data)
    return out


def expand(seed: bytes, size: int, mask: np.uint64) -> np.ndarray:
    """``size`` uint64 values uniform in [0, mask] (mask + 1 a power of two)."""
    out = fill(seed, np.empty(size, "<u8"))
    out &= mask
    return out


def add(acc: np.ndarray, seed: bytes, scratch: np.ndarray, *, subtract: bool = False
        ) -> None:
    """acc ± mask(seed) modulo 2^64, in place (``scratch``: a buffer of acc's size)."""
    fill(seed, scratch)
    if subtract:
        acc -= scratch
    else:
        acc += scratch
