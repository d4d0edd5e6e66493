"""Fixed-point encoding of updates into the ring Z_{2^b} that secure aggregation sums in.

Each coordinate is clipped to [−c, c] and stochastically rounded onto 2^q − 1 levels
(unbiased); the ring has b = q + ⌈log2 n⌉ bits, so the sum of n encoded vectors never
wraps and the server's modular sum *is* the integer sum (Bell et al. 2020, Sec. 5, and
Kairouz et al. 2021's discussion of modular clipping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RingSpec:
    clip: float  # values are clipped to [−clip, clip]
    quant_bits: int  # levels per coordinate: 2^quant_bits − 1
    clients: int  # the most vectors summed

    def __post_init__(self) -> None:
        if not self.clip > 0:
            raise ValueError("clip must be > 0")
        if not 1 <= self.quant_bits <= 32:
            raise ValueError("quant_bits must be in 1..32")
        if self.clients < 1 or self.ring_bits > 62:
            raise ValueError("quant_bits + log2(clients) must stay within 62 bits")

    @property
    def levels(self) -> int:
        return (1 << self.quant_bits) - 1

    @property
    def ring_bits(self) -> int:
        return self.quant_bits + max(1, math.ceil(math.log2(self.clients + 1)))

    @property
    def mask(self) -> np.uint64:
        return np.uint64((1 << self.ring_bits) - 1)


def quantize(x: np.ndarray, spec: RingSpec, rng: np.random.Generator) -> np.ndarray:
    """uint64 codes in [0, 2^q − 1]: x̂ = −c + code · 2c / (2^q − 1), unbiased."""
    scaled = (np.clip(x.astype(np.float64), -spec.clip, spec.clip) + spec.clip) * (
        spec.levels / (2 * spec.clip))
    codes = np.floor(scaled + rng.random(x.shape))
    return np.clip(codes, 0, spec.levels).astype(np.uint64)


def dequantize_sum(total: np.ndarray, count: int, spec: RingSpec) -> np.ndarray:
    """The float sum of ``count`` vectors from the integer sum of their codes."""
    return (total.astype(np.float64) * (2 * spec.clip / spec.levels)
            - count * spec.clip).astype(np.float32)
