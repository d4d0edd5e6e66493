"""Where DP noise comes from: a seeded generator for simulation, a CSPRNG in deployment.

``SeededNoise`` (numpy's PCG64) makes simulations reproducible: the same job and seed
give the same noise in the embedded and the distributed deployment. It is predictable
to anyone who knows the seed, so it is never used for a real release.

``SecureNoise`` draws its uniforms from AES-256 in counter mode keyed from the
operating system's CSPRNG (``os.urandom``). The Gaussian and Laplace mechanisms draw
their noise on a fixed-point grid from these bits (:mod:`tsfl.privacy.discrete`: the
discrete Gaussian and Laplace, exact up to a documented 2^-256 per comparison), which
Mironov's least-significant-bit attack (CCS 2012) cannot exploit. ``normal`` and
``laplace`` here are floating-point (Box–Muller, inverse CDF; uniforms of 52 random
bits) and serve the staircase mechanism and DP-SGD's per-step noise, whose releases are
float32 model updates.

The switch is ``privacy.noise: seeded | secure`` in the job spec (see README).
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_TWO_M53 = 1.0 / (1 << 53)
_TWO_M52 = 1.0 / (1 << 52)
_ONE_BITS = np.uint64(0x3FF0000000000000)  # the float64 exponent field of [1, 2)


class NoiseSource(Protocol):
    secure: bool

    def uniform(self, size: int) -> np.ndarray:
        """i.i.d. uniforms in the open interval (0, 1), float64."""
        ...

    def normal(self, size: int) -> np.ndarray: ...

    def laplace(self, size: int) -> np.ndarray:
        """Standard Laplace (scale 1)."""
        ...


class SeededNoise:
    """Reproducible noise from numpy's PCG64 (simulation only)."""

    secure = False

    def __init__(self, seed: int | list[int]):
        self._rng = np.random.default_rng(seed)

    def uniform(self, size: int) -> np.ndarray:
        u = self._rng.random(size)
        u[u == 0.0] = _TWO_M53  # (0, 1): the inverse CDFs below take logs
        return u

    def normal(self, size: int) -> np.ndarray:
        return self._rng.standard_normal(size)

    def laplace(self, size: int) -> np.ndarray:
        return self._rng.laplace(0.0, 1.0, size)

    def cells(self, size: int) -> tuple[np.ndarray, int]:
        """(k·2^-53, 53): PCG64's ``random`` is exactly (x >> 11)·2^-53."""
        return self._rng.random(size), 53


class SecureNoise:
    """Noise from AES-256-CTR keyed by ``os.urandom`` (deployment)."""

    secure = True

    def __init__(self, key: bytes | None = None):
        key = key if key is not None else os.urandom(32)
        if len(key) != 32:
            raise ValueError("SecureNoise needs a 32-byte key")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(os.urandom(16))).encryptor()

    def _bits(self, size: int) -> np.ndarray:
        raw = self._enc.update(bytes(8 * size))  # keystream = AES-CTR(0…0)
        return np.frombuffer(raw, dtype=np.uint64)

    def uniform(self, size: int) -> np.ndarray:
        # 52 random bits → (k + ½)·2^-52, exact in float64: never 0 or 1
        return ((self._bits(size) >> np.uint64(12)).astype(np.float64) + 0.5) * _TWO_M52

    def cells(self, size: int) -> tuple[np.ndarray, int]:
        """(k·2^-52, 52): the top 52 bits of each keystream word under 1.0's exponent."""
        a = ((self._bits(size) >> np.uint64(12)) | _ONE_BITS).view(np.float64)
        a -= 1.0
        return a, 52

    def normal(self, size: int) -> np.ndarray:
        half = (size + 1) // 2
        u1, u2 = self.uniform(half), self.uniform(half)
        r = np.sqrt(-2.0 * np.log(u1))
        theta = 2.0 * np.pi * u2
        return np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:size]

    def laplace(self, size: int) -> np.ndarray:
        u = self.uniform(size) - 0.5
        return -np.sign(u) * np.log1p(-2.0 * np.abs(u))


def noise_source(kind: str, seed: int | list[int] | None = None) -> NoiseSource:
    """``"seeded"`` (needs ``seed``) or ``"secure"``."""
    if kind == "seeded":
        if seed is None:
            raise ValueError("seeded noise needs a seed")
        return SeededNoise(seed)
    if kind == "secure":
        return SecureNoise()
    raise ValueError(f"unknown noise source {kind!r} (seeded or secure)")
