"""Masks: a 32-byte seed expanded by ChaCha20 (a CSPRNG, not a statistical PRNG)."""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_NONCE = bytes(16)  # each seed is used for one mask only (seeds are fresh per round)


def expand(seed: bytes, size: int, mask: np.uint64) -> np.ndarray:
    """``size`` uint64 values uniform in [0, mask] (mask + 1 a power of two)."""
    if len(seed) != 32:
        raise ValueError("a mask seed is 32 bytes")
    enc = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    stream = enc.update(bytes(8 * size))
    return np.frombuffer(stream, "<u8") & mask
