"""A device's example count and metrics, summed inside the masked vector.

Sending n_u and the metrics beside the masked update would tell the server each
device's dataset size and training loss. Instead they ride in extra ring coordinates
appended to the update, masked like it, so the server learns only Σ n_u and the
example-weighted metric sums.

Each value is an exact non-negative integer written in base 2^q (q = the ring's
``quant_bits``), one limb per coordinate: a limb is < 2^q, like an update code, so the
ring (q + ⌈log2(n + 1)⌉ bits) sums n of them without wrapping, and the server rebuilds
each total as Σ_j 2^{qj} · (Σ_u limb_{u,j}) exactly.

- n_u ≤ 2^40: ``N_BITS`` bits.
- each metric m: reported weight w_u = n_u (0 if the device has no finite m), and
  w_u · v_u with v_u = round((clip(m, −M, M) + M) · 2^16) — a fixed-point metric, so
  Σ w·m = Σ(w·v) / 2^16 − M · Σ w. The server gets the example-weighted mean
  Σ w·m / Σ w, as the aggregator computes it in the clear, to 2^−16.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

N_BITS = 41  # examples ≤ 2^40
MAX_EXAMPLES = 1 << 40
FRAC_BITS = 16


@dataclass(frozen=True)
class Extras:
    quant_bits: int  # q: the limb width
    metrics: tuple[str, ...] = ("train_loss",)
    metric_clip: float = 1000.0  # M

    def __post_init__(self) -> None:
        if not self.metric_clip > 0 or not math.isfinite(self.metric_clip):
            raise ValueError("metric_clip must be a positive number")
        if len(set(self.metrics)) != len(self.metrics) or len(self.metrics) > 16:
            raise ValueError("at most 16 distinct metric names")

    @property
    def _value_bits(self) -> int:
        return N_BITS + math.ceil(math.log2(2 * self.metric_clip * (1 << FRAC_BITS) + 1))

    def _limbs(self, bits: int) -> int:
        return -(-bits // self.quant_bits)

    @property
    def width(self) -> int:
        """Extra ring coordinates after the update."""
        per_metric = self._limbs(N_BITS) + self._limbs(self._value_bits)
        return self._limbs(N_BITS) + len(self.metrics) * per_metric

    def _split(self, value: int, bits: int) -> list[int]:
        mask = (1 << self.quant_bits) - 1
        return [(value >> (self.quant_bits * j)) & mask for j in range(self._limbs(bits))]

    def encode(self, num_examples: int, metrics: Mapping[str, float]) -> np.ndarray:
        """The device's extra coordinates (each < 2^q)."""
        if not 0 <= num_examples <= MAX_EXAMPLES:
            raise ValueError(f"num_examples must be in 0..2^40, not {num_examples}")
        limbs = self._split(num_examples, N_BITS)
        m_clip, scale = self.metric_clip, 1 << FRAC_BITS
        for name in self.metrics:
            value = metrics.get(name)
            weight, fixed = 0, 0
            if isinstance(value, int | float) and math.isfinite(value):
                weight = num_examples
                fixed = round((min(max(float(value), -m_clip), m_clip) + m_clip) * scale)
            limbs += self._split(weight, N_BITS) + self._split(weight * fixed,
                                                               self._value_bits)
        return np.asarray(limbs, dtype=np.uint64)

    def _join(self, sums: np.ndarray, start: int, bits: int) -> tuple[int, int]:
        count = self._limbs(bits)
        total = sum(int(sums[start + j]) << (self.quant_bits * j) for j in range(count))
        return total, start + count

    def decode_sum(self, sums: np.ndarray) -> tuple[int, dict[str, float]]:
        """(Σ n, {metric: example-weighted mean}) from the summed extra coordinates
        (metrics no survivor reported are left out)."""
        if sums.shape != (self.width,):
            raise ValueError(f"{self.width} extra coordinates expected")
        examples, at = self._join(sums, 0, N_BITS)
        out = {}
        for name in self.metrics:
            weight, at = self._join(sums, at, N_BITS)
            weighted, at = self._join(sums, at, self._value_bits)
            if weight:
                out[name] = (weighted / (1 << FRAC_BITS) - self.metric_clip * weight) / weight
        return examples, out
