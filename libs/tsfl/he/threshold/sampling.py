"""Randomness for the threshold scheme: one ChaCha20 keystream per purpose.

Two kinds of stream, one construction (ChaCha20, RFC 8439, via ``cryptography``):

- **secret** streams (:meth:`Prg.fresh`) are keyed from the operating system's CSPRNG:
  secret-key shares, encryption randomness u, errors e, flooding noise;
- **derived** streams (:meth:`Prg.derived`) are keyed by SHA-256 of a key and a
  domain-separated label, so every party that knows the key expands the same values:
  the common reference polynomial a (public seed), the output masks (a key only the
  silos hold), the sum-check vectors (a public challenge).

Distributions: uniform mod p by rejection (30-bit words below p: no bias), ternary
{−1, 0, 1} by rejection of the byte 255 (b mod 3 is then exactly uniform), and rounded
Gaussians by Box–Muller on 53-bit uniforms.
"""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_TWO_M53 = 1.0 / (1 << 53)


def derive_key(key: bytes, label: bytes, *parts: bytes | str | int) -> bytes:
    """SHA-256(len-prefixed label, key and parts): 32 bytes, unambiguous encoding."""
    h = hashlib.sha256()
    for item in (label, key, *parts):
        raw = (item.encode() if isinstance(item, str) else
               item.to_bytes(8, "big", signed=True) if isinstance(item, int) else bytes(item))
        h.update(struct.pack(">I", len(raw)))
        h.update(raw)
    return h.digest()


class Prg:
    """A ChaCha20 keystream turned into arrays."""

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError("a PRG key is 32 bytes")
        self._enc = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()

    @classmethod
    def fresh(cls) -> Prg:
        """Secret randomness: keyed from ``os.urandom``."""
        return cls(os.urandom(32))

    @classmethod
    def derived(cls, key: bytes, label: bytes, *parts: bytes | str | int) -> Prg:
        """Reproducible by whoever knows ``key`` (and the label and parts)."""
        return cls(derive_key(key, label, *parts))

    def bytes(self, n: int) -> bytes:
        return self._enc.update(bytes(n))

    def uniform_mod(self, primes: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
        """Uniform residues of shape ``shape`` = (…, k, N): limb i uniform in [0, p_i).
        Every p_i is below 2^30 (and above 2^29.99): 30-bit words are drawn and the few
        ≥ p_i redrawn."""
        k = len(primes)
        if shape[-2] != k:
            raise ValueError("shape must end in (k, N)")
        out = np.empty(shape, dtype=np.uint64)
        for i, p in enumerate(primes):
            limb = out[..., i, :]
            need = limb.size
            got = self._words30(need + need // 1024 + 16)
            ok = got < np.uint32(p)
            if not ok[:need].all():
                got = got[ok]
                while got.size < need:
                    extra = self._words30(need)
                    got = np.concatenate([got, extra[extra < np.uint32(p)]])
            limb[...] = got[:need].reshape(limb.shape)
        return out

    def reduced_words(self, primes: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
        """Residues of shape (…, k, N), each a 30-bit word reduced mod p_i (no rejection:
        a residue has at most two preimages, so each value has probability ≤ 2^-29) —
        enough where only unpredictability counts (the sum check's vectors)."""
        out = np.empty(shape, dtype=np.uint64)
        for i, p in enumerate(primes):
            limb = out[..., i, :]
            words = self._words30(limb.size)
            np.subtract(words, np.uint32(p), out=words, where=words >= np.uint32(p))
            limb[...] = words.reshape(limb.shape)
        return out

    def _words30(self, n: int) -> np.ndarray:
        words = np.frombuffer(self.bytes(4 * n), dtype="<u4").copy()
        np.bitwise_and(words, np.uint32((1 << 30) - 1), out=words)
        return words

    def ternary(self, size: int) -> np.ndarray:
        """``size`` int64 values uniform in {−1, 0, 1}."""
        got = np.empty(0, dtype=np.int64)
        while got.size < size:
            draw = np.frombuffer(self.bytes(size - got.size + 64), dtype=np.uint8)
            got = np.concatenate([got, draw[draw < 255].astype(np.int64) % 3 - 1])
        return got[:size]

    def uniform01(self, size: int) -> np.ndarray:
        """float64 uniforms in the open interval (0, 1) (53 random bits each)."""
        words = np.frombuffer(self.bytes(8 * size), dtype="<u8") >> np.uint64(11)
        return (words.astype(np.float64) + 0.5) * _TWO_M53

    def gaussian(self, size: int, sigma: float) -> np.ndarray:
        """``size`` samples of N(0, σ²) rounded to integers (float64; exact integers)."""
        half = (size + 1) // 2
        u1, u2 = self.uniform01(half), self.uniform01(half)
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])[:size]
        return np.rint(z * sigma)
