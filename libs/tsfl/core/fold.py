"""One round's streaming FedAvg fold, with the finiteness check deferred and batched.

Checking every update for NaN/Inf before folding it costs a full extra pass over
the update — as much as the fold itself. Addition propagates non-finite values
(NaN + x = NaN, Inf + finite = Inf, Inf − Inf = NaN), so if the weighted sum is
finite, every update folded into it was finite. The fold checks the sum once every
``window`` updates and keeps a copy of the last sum seen finite; only when a check fails
are the updates folded since then (views, not copies) checked one by one and the sum
rebuilt from that copy and the good ones, in their original order — bit-identical to a
strict fold that had refused the bad ones on arrival. A bad one is non-finite, or finite
but pushing the float32 sum past its range (an update of ±3e38): that update is refused
as ``overflow``, not the round — the honest updates still aggregate. Memory stays O(P)
plus ``window`` updates, however many the round has (1,000 updates of 4 MB would
otherwise all stay alive until the close).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

from tsfl.core.accumulator import WeightedAccumulator
from tsfl.core.finite import all_finite

NONFINITE = "nonfinite: update contains NaN or Inf"
OVERFLOW = "overflow: adding this update takes the round's float32 sum past its range"


@dataclass
class FoldResult:
    mean: np.ndarray | None  # None: nothing valid to aggregate
    accepted: list[Hashable]
    rejected: dict[Hashable, str] = field(default_factory=dict)
    total_weight: float = 0.0
    error: str | None = None


class RoundFold:
    """Σ w_k x_k over one round's updates: O(P) state plus references to at most
    ``window`` of them (those folded since the sum was last seen finite)."""

    def __init__(self, size: int, window: int = 16):
        if window < 1:
            raise ValueError("window must be at least 1")
        self.size = size
        self.window = window
        self._acc = WeightedAccumulator(size)
        self._verified: WeightedAccumulator | None = None  # the sum last seen finite
        self._recent: list[tuple[Hashable, np.ndarray, float]] = []  # folded since
        self._accepted: list[Hashable] = []
        self._rejected: dict[Hashable, str] = {}
        self._accepted_weight = 0.0

    def __len__(self) -> int:
        return len(self._accepted) + len(self._rejected) + len(self._recent)

    def add(self, key: Hashable, vector: np.ndarray, weight: float) -> None:
        self._acc.add(vector, weight)
        self._recent.append((key, vector, float(weight)))
        if len(self._recent) >= self.window:
            self._check()

    def _check(self) -> None:
        """Settle the updates folded since the last check (see the module docstring)."""
        if not self._recent:
            return
        if all_finite(self._acc.weighted_sum):
            self._accepted.extend(key for key, _, _ in self._recent)
            self._accepted_weight += sum(weight for _, _, weight in self._recent)
        else:  # rebuild from the last finite sum, refusing what breaks it
            self._acc = (self._verified.copy() if self._verified is not None
                         else WeightedAccumulator(self.size))
            for key, vector, weight in self._recent:
                if not all_finite(vector):
                    self._rejected[key] = NONFINITE
                    continue
                before = self._acc.copy()
                self._acc.add(vector, weight)
                if all_finite(self._acc.weighted_sum):
                    self._accepted.append(key)
                    self._accepted_weight += weight
                else:
                    self._acc = before
                    self._rejected[key] = OVERFLOW
        self._recent.clear()
        self._verified = self._acc.copy()

    def close(self) -> FoldResult:
        """The example-weighted mean, refusing non-finite and overflowing updates (see
        the module docstring)."""
        self._check()
        accepted, rejected = self._accepted, self._rejected
        if not accepted:
            return FoldResult(None, [], rejected)
        return FoldResult(self._acc.mean_inplace(), accepted, rejected,
                          self._acc.total_weight)


class EstimatorFold(RoundFold):
    """A round whose aggregate is a coordinate-wise estimator (median, trimmed mean,
    Bulyan's last step) over the kept updates, evaluated at the close; the weights are
    vote counts only (a kept update is one row). Holds every update until the close:
    the estimator needs them all."""

    def __init__(self, size: int, estimate: Callable[[np.ndarray], np.ndarray]):
        super().__init__(size)
        self.estimate = estimate
        self._items: list[tuple[Hashable, np.ndarray, float]] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, key: Hashable, vector: np.ndarray, weight: float) -> None:
        self._items.append((key, vector, float(weight)))

    def close(self) -> FoldResult:
        if not self._items:
            return FoldResult(None, [])
        rejected = {k: NONFINITE for k, v, _ in self._items if not all_finite(v)}
        kept = [(k, v, w) for k, v, w in self._items if k not in rejected]
        self._items.clear()
        if not kept:
            return FoldResult(None, [], rejected)
        mean = self.estimate(np.stack([v for _, v, _ in kept]))
        return FoldResult(np.ascontiguousarray(mean, dtype=np.float32), [k for k, _, _ in kept],
                          rejected, float(sum(w for _, _, w in kept)))
