"""Byzantine-robust aggregation rules behind one interface.

Each rule maps one round's updates (n × d) to a :class:`RobustResult`: the robust
aggregate and, per update, a verdict (a vote weight in [0, 1], a scale applied to the
update, named scores, a reason). Two kinds:

- ``weights`` rules (Krum, Multi-Krum, norm bounding, FLTrust, WFAgg) are a weighted mean
  of scaled updates, so the streaming aggregator applies their verdicts directly;
- ``coordinate`` rules (median, trimmed mean, Bulyan) are coordinate-wise estimators over
  the updates they keep; the aggregator evaluates them at the round's close.

All pairwise distances come from one Gram matrix (:mod:`tsfl.robust.geometry`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from tsfl.robust import geometry


@dataclass
class RobustResult:
    vector: np.ndarray  # the aggregate (float32, d)
    weights: np.ndarray  # per update: vote weight in [0, 1] (0 = refused)
    scale: np.ndarray  # per update: factor applied to the update before averaging
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def refused(self) -> np.ndarray:
        return self.weights <= 0.0


def weighted_mean(x: np.ndarray, votes: np.ndarray, scale: np.ndarray | None = None
                  ) -> np.ndarray:
    """Σ vᵢ sᵢ xᵢ / Σ vᵢ (float32); zeros when no vote is left."""
    total = float(votes.sum())
    if total <= 0:
        return np.zeros(x.shape[1], dtype=np.float32)
    coef = votes if scale is None else votes * scale
    return ((coef / total).astype(np.float64) @ x.astype(np.float64)).astype(np.float32)


def malicious_bound(num_malicious: int) -> int:
    """f, validated: the number of Byzantine updates a rule assumes it may face."""
    if num_malicious < 0:
        raise ValueError("num_malicious must be ≥ 0")
    return int(num_malicious)


def _examples(n: int, num_examples: np.ndarray | None) -> np.ndarray:
    if num_examples is None:
        return np.ones(n)
    ex = np.asarray(num_examples, dtype=np.float64)
    if ex.shape != (n,) or np.any(ex < 0):
        raise ValueError("num_examples must be n non-negative counts")
    return ex


class RobustAggregator(ABC):
    name: str
    kind: str = "weights"  # weights | coordinate
    #: votes are the rule's own weights (FLTrust's trust scores), not example counts
    uniform: bool = False

    @abstractmethod
    def aggregate(self, updates: np.ndarray, num_examples: np.ndarray | None = None
                  ) -> RobustResult:
        """The round's robust aggregate of ``updates`` (n × d)."""

    def coordinate_estimate(self, kept: np.ndarray) -> np.ndarray:
        """A ``coordinate`` rule's estimator over the updates its verdicts kept."""
        raise NotImplementedError(f"{self.name} is not a coordinate-wise rule")

    def _check(self, x: np.ndarray, minimum: int) -> None:
        if x.ndim != 2:
            raise ValueError(f"updates must be an n × d matrix, got shape {x.shape}")
        if x.shape[0] < minimum:
            raise ValueError(f"{self.name} needs at least {minimum} updates, got {x.shape[0]}")


def krum_scores(d2: np.ndarray, f: int) -> np.ndarray:
    """Krum's score (Blanchard et al., NeurIPS 2017, §4): for each update, the sum of its
    squared distances to its n − f − 2 nearest neighbours (at least 1)."""
    n = d2.shape[0]
    k = max(1, n - f - 2)
    off = d2 + np.diag(np.full(n, np.inf))
    k = min(k, n - 1)
    nearest = np.partition(off, k - 1, axis=1)[:, :k]
    return nearest.sum(axis=1)


class Krum(RobustAggregator):
    """Krum: the single update with the smallest score."""

    name = "krum"

    def __init__(self, num_malicious: int):
        self.f = malicious_bound(num_malicious)

    def aggregate(self, updates: np.ndarray, num_examples: np.ndarray | None = None
                  ) -> RobustResult:
        x = geometry.stack(updates)
        self._check(x, 2)
        scores = krum_scores(geometry.pairwise_sq_distances(x), self.f)
        best = int(np.argmin(scores))
        weights = np.zeros(len(x))
        weights[best] = 1.0
        reasons = ["selected: smallest Krum score" if i == best else
                   f"not selected: Krum score {s:.4g} > {scores[best]:.4g}"
                   for i, s in enumerate(scores)]
        return RobustResult(x[best].astype(np.float32), weights, np.ones(len(x)),
                            {"krum": scores}, reasons)


class MultiKrum(RobustAggregator):
    """Multi-Krum (Blanchard et al. 2017, §4): the example-weighted mean of the m updates
    with the smallest Krum scores (m defaults to n − f)."""

    name = "multikrum"

    def __init__(self, num_malicious: int, to_keep: int | None = None):
        if to_keep is not None and to_keep < 1:
            raise ValueError("to_keep must be ≥ 1")
        self.f, self.m = malicious_bound(num_malicious), to_keep

    def aggregate(self, updates: np.ndarray, num_examples: np.ndarray | None = None
                  ) -> RobustResult:
        x = geometry.stack(updates)
        self._check(x, 2)
        n = len(x)
        scores = krum_scores(geometry.pairwise_sq_distances(x), self.f)
        m = min(self.m or max(1, n - self.f), n)
        keep = np.argsort(scores, kind="stable")[:m]
        weights = np.zeros(n)
        weights[keep] = 1.0
        cut = np.sort(scores)[m - 1]
        reasons = ["selected: among the smallest Krum scores" if weights[i] else
                   f"not selected: Krum score {scores[i]:.4g} > cut-off {cut:.4g}"
                   for i in range(n)]
        votes = weights * _examples(n, num_examples)
        return RobustResult(weighted_mean(x, votes), weights, np.ones(n), {"krum": scores},
                            reasons)


class Median(RobustAggregator):
    """Coordinate-wise median (Yin et al., ICML 2018)."""

    name = "median"
    kind = "coordinate"

    def aggregate(self, updates: np.ndarray, num_examples: np.ndarray | None = None
                  ) -> RobustResult:
        x = geometry.stack(updates)
        self._check(x, 1)
        n = len(x)
        return RobustResult(self.coordinate_estimate(x), np.ones(n), np.ones(n),
                            {}, ["kept: coordinate-wise median"] * n)

    def coordinate_estimate(self, kept: np.ndarray) -> np.ndarray:
        return np.median(kept, axis=0).astype(np.float32)


class TrimmedMean(RobustAggregator):
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018): drop the ⌊βn⌋ largest and
    smallest values of each coordinate, average the rest."""

    name = "trimmed_mean"
    kind = "coordinate"

    def __init__(self, beta: float = 0.1):
        if not 0.0 <= beta < 0.5:
            raise ValueError("trimmed_mean beta must be in [0, 0.5)")
        self.beta = beta

    def aggregate(self, updates: np.ndarray, num_examples: np.ndarray | None = None
                  ) -> RobustResult:
        x = geometry.stack(updates)
        self._check(x, 1)
        n = len(x)
        return RobustResult(self.coordinate_estimate(x), np.ones(n), np.ones(n), {},
                            [f"kept: trimmed mean (β={self.beta:g})"] * n)

    def coordinate_estimate(self, kept: np.ndarray) -> np.ndarray:
        n = len(kept)
        lo = int(self.beta * n)
        part = np.partition(kept, (lo, n - lo - 1), axis=0) if lo else kept
        return part[lo:n - lo].mean(axis=0, dtype=np.float64).astype(np.float32)


class Bulyan(RobustAggregator):
    """Bulyan (El Mhamdi, Guerraoui & Rouault, ICML 2018, Alg. 1): θ = n − 2f updates
    chosen by repeated Krum on what is left, then per coordinate the mean of the β = θ − 2f
    values closest to the selection's median. Needs n ≥ 4f + 3."""

    name = "bulyan"
    kind = "coordinate"

    def __init__(self, num_malicious: int):
        self.f = malicious_bound(num_malicious)

    def aggregate(self, updates: np.ndarray, num_examples: np.ndarray | None = None
                  ) -> RobustResult:
        x = geometry.stack(updates)
        n, f = len(x), self.f
        if n < 4 * f + 3:
            raise ValueError(f"bulyan needs n ≥ 4f + 3 updates: n={n}, f={f}")
        d2 = geometry.pairwise_sq_distances(x)  # one Gram matrix for all θ Krum rounds
        left = list(range(n))
        chosen: list[int] = []
        for _ in range(n - 2 * f):
            sub = d2[np.ix_(left, left)]
            pick = left[int(np.argmin(krum_scores(sub, f)))]
            chosen.append(pick)
            left.remove(pick)
        vector = self.coordinate_estimate(x[chosen])
        weights = np.zeros(n)
        weights[chosen] = 1.0
        order = np.full(n, -1.0)
        order[chosen] = np.arange(len(chosen))
        reasons = [f"selected: Krum round {int(order[i]) + 1}" if weights[i] else
                   "not selected by the repeated Krum" for i in range(n)]
        return RobustResult(vector, weights, np.ones(n), {"selection_order": order}, reasons)

    def coordinate_estimate(self, kept: np.ndarray) -> np.ndarray:
        """Per coordinate, the mean of the β = θ − 2f selected values nearest the median."""
        beta = max(1, len(kept) - 2 * self.f)
        med = np.median(kept, axis=0)
        idx = np.argpartition(np.abs(kept - med), beta - 1, axis=0)[:beta]
        return np.take_along_axis(kept, idx, axis=0).mean(axis=0, dtype=np.float64
                                                           ).astype(np.float32)


class NormBounding(RobustAggregator):
    """Norm bounding (Sun et al., "Can You Really Backdoor Federated Learning?", 2019):
    each update is scaled to L2 norm at most M, then averaged."""

    name = "norm_bounding"

    def __init__(self, max_norm: float):
        if not max_norm > 0:
            raise ValueError("norm_bounding max_norm must be > 0")
        self.max_norm = max_norm

    def aggregate(self, updates: np.ndarray, num_examples: np.ndarray | None = None
                  ) -> RobustResult:
        x = geometry.stack(updates)
        self._check(x, 1)
        n = len(x)
        norms = geometry.norms(x)
        scale = np.minimum(1.0, self.max_norm / np.maximum(norms, 1e-12))
        reasons = ["kept" if s >= 1 else f"scaled: norm {v:.4g} > {self.max_norm:g}"
                   for s, v in zip(scale, norms, strict=True)]
        votes = _examples(n, num_examples)
        return RobustResult(weighted_mean(x, votes, scale), np.ones(n), scale,
                            {"norm": norms}, reasons)


class FLTrust(RobustAggregator):
    """FLTrust (Cao et al., NDSS 2021, eq. 3–5): trust TSᵢ = ReLU(cos(gᵢ, g₀)) against the
    server's update g₀ on its small root dataset; each update is rescaled to ‖g₀‖ and the
    aggregate is Σ TSᵢ ḡᵢ / Σ TSⱼ."""

    name = "fltrust"
    uniform = True

    def __init__(self, root_update: np.ndarray):
        self.root = np.asarray(root_update, dtype=np.float32).ravel()
        if not np.all(np.isfinite(self.root)):
            raise ValueError("FLTrust's root update must be finite")

    def aggregate(self, updates: np.ndarray, num_examples: np.ndarray | None = None
                  ) -> RobustResult:
        x = geometry.stack(updates)
        self._check(x, 1)
        if x.shape[1] != self.root.shape[0]:
            raise ValueError(f"root update has {self.root.shape[0]} values, updates "
                             f"{x.shape[1]}")
        cos = 1.0 - geometry.cosine_distances_to(x, self.root)
        trust = np.maximum(cos, 0.0)
        scale = float(np.linalg.norm(self.root)) / np.maximum(geometry.norms(x), 1e-12)
        reasons = [f"trust {t:.3f}" if t > 0 else f"refused: cosine to the root update "
                   f"{c:.3f} ≤ 0" for t, c in zip(trust, cos, strict=True)]
        return RobustResult(weighted_mean(x, trust, scale), trust, scale,
                            {"trust": trust, "cosine": cos}, reasons)


class Mean(RobustAggregator):
    """Plain FedAvg (no defence): the example-weighted mean; the baseline in benchmarks."""

    name = "fedavg"

    def aggregate(self, updates: np.ndarray, num_examples: np.ndarray | None = None
                  ) -> RobustResult:
        x = geometry.stack(updates)
        self._check(x, 1)
        n = len(x)
        return RobustResult(weighted_mean(x, _examples(n, num_examples)), np.ones(n),
                            np.ones(n), {}, ["kept: no robust filter"] * n)
