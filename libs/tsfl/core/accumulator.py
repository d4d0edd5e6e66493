"""Streaming weighted accumulator: the fold at the heart of FedAvg.

McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data" (AISTATS 2017), eq. (1)-(2): the new model is the
example-weighted mean of client models, w = Σ_k (n_k / n) w_k. We fold each
update as it arrives with one in-place BLAS ``axpy`` (acc ← acc + n_k·Δ_k) and
divide once at close, so memory is O(P) whatever the number of clients and the
close costs O(P).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg.blas import saxpy

from tsfl.core.layout import VECTOR_DTYPE
from tsfl.errors import TsflError


class AccumulatorError(TsflError, ValueError):
    """A vector or weight the accumulator cannot take."""


class WeightedAccumulator:
    """acc = Σ w_k x_k and W = Σ w_k, folded one update at a time."""

    __slots__ = ("_acc", "count", "size", "total_weight")

    def __init__(self, size: int):
        if size < 0:
            raise AccumulatorError("size must be non-negative")
        self.size = size
        self._acc = np.zeros(size, dtype=VECTOR_DTYPE)
        self.total_weight = 0.0
        self.count = 0

    def add(self, vector: np.ndarray, weight: float) -> None:
        """Fold ``weight · vector`` into the sum (in place, no temporaries)."""
        if not (weight > 0.0) or not np.isfinite(weight):
            raise AccumulatorError(f"weight must be finite and > 0, got {weight!r}")
        if vector.dtype != VECTOR_DTYPE or vector.shape != (self.size,):
            raise AccumulatorError(
                f"expected float32 vector of {self.size} values, got {vector.dtype} {vector.shape}"
            )
        if self.size:
            saxpy(vector, self._acc, a=weight)
        self.total_weight += float(weight)
        self.count += 1

    def copy(self) -> WeightedAccumulator:
        out = WeightedAccumulator(0)
        out.size, out._acc = self.size, self._acc.copy()
        out.total_weight, out.count = self.total_weight, self.count
        return out

    def merge(self, other: WeightedAccumulator) -> None:
        """Add a partial sum (e.g. from another aggregator shard)."""
        if other.size != self.size:
            raise AccumulatorError("cannot merge accumulators of different sizes")
        if self.size:
            saxpy(other._acc, self._acc, a=1.0)
        self.total_weight += other.total_weight
        self.count += other.count

    @property
    def weighted_sum(self) -> np.ndarray:
        return self._acc

    def mean(self) -> np.ndarray:
        """Σ w_k x_k / Σ w_k as a new float32 vector."""
        if self.count == 0:
            raise AccumulatorError("no updates were folded")
        return (self._acc * np.float32(1.0 / self.total_weight)).astype(VECTOR_DTYPE, copy=False)

    def mean_inplace(self) -> np.ndarray:
        """Like :meth:`mean` but divides the accumulator itself (no new allocation)."""
        if self.count == 0:
            raise AccumulatorError("no updates were folded")
        self._acc *= np.float32(1.0 / self.total_weight)
        return self._acc
