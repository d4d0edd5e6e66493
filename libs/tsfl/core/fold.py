"""One round's streaming FedAvg fold, with the finiteness check deferred to the close.

Checking every update for NaN/Inf before folding it costs a full extra pass over
the update — as much as the fold itself. Addition propagates non-finite values
(NaN + x = NaN, Inf + finite = Inf, Inf − Inf = NaN), so if the weighted sum is
finite at close, every folded update was finite. Only when it is not are the
retained updates (views, not copies) checked one by one and the sum rebuilt from
the good ones in their original order — bit-identical to a strict fold that had
refused the bad ones on arrival.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

from tsfl.core.accumulator import WeightedAccumulator
from tsfl.wire.messages import all_finite


@dataclass
class FoldResult:
    mean: np.ndarray | None  # None: nothing valid to aggregate
    accepted: list[Hashable]
    rejected: dict[Hashable, str] = field(default_factory=dict)
    total_weight: float = 0.0
    error: str | None = None


class RoundFold:
    """Σ w_k x_k over one round's updates, O(P) state plus references to the inputs."""

    def __init__(self, size: int):
        self.size = size
        self._acc = WeightedAccumulator(size)
        self._items: list[tuple[Hashable, np.ndarray, float]] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, key: Hashable, vector: np.ndarray, weight: float) -> None:
        self._acc.add(vector, weight)
        self._items.append((key, vector, float(weight)))

    def close(self) -> FoldResult:
        """The example-weighted mean, refusing non-finite updates (see module docstring)."""
        if not self._items:
            return FoldResult(None, [])
        acc, rejected = self._acc, {}
        if not all_finite(acc.weighted_sum):
            acc = WeightedAccumulator(self.size)
            for key, vector, weight in self._items:
                if all_finite(vector):
                    acc.add(vector, weight)
                else:
                    rejected[key] = "nonfinite: update contains NaN or Inf"
        accepted = [k for k, _, _ in self._items if k not in rejected]
        self._items.clear()
        if not accepted:
            return FoldResult(None, [], rejected)
        if not all_finite(acc.weighted_sum):
            return FoldResult(None, accepted, rejected, acc.total_weight,
                              error="the weighted sum overflows float32")
        return FoldResult(acc.mean_inplace(), accepted, rejected, acc.total_weight)


class EstimatorFold(RoundFold):
    """A round whose aggregate is a coordinate-wise estimator (median, trimmed mean,
    Bulyan's last step) over the kept updates, evaluated at the close; the weights are
    vote counts only (a kept update is one row)."""

    def __init__(self, size: int, estimate: Callable[[np.ndarray], np.ndarray]):
        super().__init__(size)
        self.estimate = estimate

    def close(self) -> FoldResult:
        if not self._items:
            return FoldResult(None, [])
        rejected = {k: "nonfinite: update contains NaN or Inf"
                    for k, v, _ in self._items if not all_finite(v)}
        kept = [(k, v, w) for k, v, w in self._items if k not in rejected]
        self._items.clear()
        if not kept:
            return FoldResult(None, [], rejected)
        mean = self.estimate(np.stack([v for _, v, _ in kept]))
        return FoldResult(np.ascontiguousarray(mean, dtype=np.float32), [k for k, _, _ in kept],
                          rejected, float(sum(w for _, _, w in kept)))
