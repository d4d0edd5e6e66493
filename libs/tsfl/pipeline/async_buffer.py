"""FedBuff's server buffer (Nguyen et al., "Federated Learning with Buffered Asynchronous
Aggregation", AISTATS 2022, Algorithm 1).

Devices train on whatever model version they pulled; an update trained on version ``v``
arriving when the server is at version ``t`` has staleness ``τ = t − v``. Updates staler
than ``max_staleness`` are refused. An accepted update ``Δ_i`` (optionally norm-bounded:
``Δ_i · min(1, M / ‖Δ_i‖)``, Sun et al. 2019) is weighted by ``s(τ)``:

* constant: ``s(τ) = 1``;
* polynomial: ``s(τ) = (1 + τ)^{−a}`` (FedBuff §3, after Xie et al., "FedAsync", 2019);
* hinge: ``s(τ) = 1`` for ``τ ≤ b``, else ``1 / (a·(τ − b) + 1)`` (FedAsync, §5.2);

and after every ``K`` accepted updates the buffer releases ``Δ̄ = (1/K) Σ s(τ_i)·Δ_i``
(Algorithm 1, line 12), which the server strategy applies: ``x ← x + η_g Δ̄``. With
``by_examples`` the release is FedAvg's weighting (McMahan et al., AISTATS 2017) within the
buffer instead, ``Δ̄ = Σ s(τ_i)·n_i·Δ_i / Σ n_i`` (n_i: the update's training records):
the uniform mean gives a 50-record device the weight of a 2,000-record one, and since
small devices also finish first, an asynchronous stream over-represents them further —
on Synthetic(1, 1) with 1,000 clients the uniform mean stalls well below FedAvg
(``benchmarks/README.md``). Memory is O(P): the buffer is a streaming sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tsfl.config import JobSpec


def staleness_weight(tau: int, kind: str, a: float = 0.5, b: int = 4) -> float:
    """``s(τ)`` (see the module docstring)."""
    if tau < 0:
        raise ValueError(f"negative staleness {tau}")
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((1.0 + tau) ** (-a))
    if kind == "hinge":
        return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    raise ValueError(f"unknown staleness weighting {kind!r}")


def staleness(spec: JobSpec, trained_on: int, current: int) -> int:
    """``τ = current − trained_on`` for an update of a job with ``spec``: 0 is the only
    staleness a synchronous round takes; FedBuff takes up to ``max_staleness``.
    ValueError otherwise."""
    tau = current - trained_on
    limit = spec.strategy.fedbuff.max_staleness if spec.strategy.mode == "async" else 0
    if not 0 <= tau <= limit:
        raise ValueError(f"trained on model v{trained_on}, the round is on v{current}"
                         + (f" (staleness {tau}, at most {limit} taken)" if limit else ""))
    return tau


def staleness_scale(spec: JobSpec, tau: int) -> float:
    """``s(τ)`` with the job's ``strategy.fedbuff`` weighting."""
    fb = spec.strategy.fedbuff
    return staleness_weight(tau, fb.weighting, fb.a, fb.b)


@dataclass
class Release:
    """One release of the buffer: the weighted mean delta and what went into it."""

    mean_delta: np.ndarray
    count: int
    staleness: list[int]
    train_loss: float | None
    examples: int


@dataclass
class AsyncBuffer:
    """The streaming buffer of K updates."""

    size: int
    buffer: int
    max_staleness: int
    weighting: str = "polynomial"
    a: float = 0.5
    b: int = 4
    max_norm: float | None = None  # norm bounding of each update
    by_examples: bool = False  # Σ s·n·Δ / Σ n (FedAvg weighting) instead of (1/K) Σ s·Δ
    version: int = 0  # the server's model version (releases so far)
    refused: int = 0
    clipped: int = 0
    _sum: np.ndarray = field(init=False)
    _staleness: list[int] = field(default_factory=list)
    _losses: list[tuple[float, int]] = field(default_factory=list)
    _examples: int = 0

    def __post_init__(self) -> None:
        if self.buffer < 1:
            raise ValueError("the buffer needs K ≥ 1")
        self._sum = np.zeros(self.size, dtype=np.float64)

    def offer(self, delta: np.ndarray, base_version: int, examples: int = 1,
              train_loss: float | None = None) -> Release | None:
        """Add one update trained on ``base_version``; the release when it fills the
        buffer, else None. A too-stale or non-finite update is refused (counted)."""
        tau = self.version - int(base_version)
        if tau < 0 or tau > self.max_staleness or delta.shape != (self.size,):
            self.refused += 1
            return None
        d = np.asarray(delta, dtype=np.float64)
        norm = float(np.linalg.norm(d))
        if not math.isfinite(norm):
            self.refused += 1
            return None
        scale = staleness_weight(tau, self.weighting, self.a, self.b)
        if self.max_norm is not None and norm > self.max_norm:
            scale *= self.max_norm / norm
            self.clipped += 1
        if self.by_examples:
            scale *= max(int(examples), 1)
            self._examples += max(int(examples), 1)
        self._sum += scale * d
        self._staleness.append(tau)
        if train_loss is not None and math.isfinite(train_loss):
            self._losses.append((float(train_loss), int(examples)))
        if len(self._staleness) < self.buffer:
            return None
        return self._release()

    def _release(self) -> Release:
        mean = (self._sum / (self._examples if self.by_examples else self.buffer)
                ).astype(np.float32)
        self._examples = 0
        n = sum(e for _, e in self._losses)
        loss = sum(v * e for v, e in self._losses) / n if n else None
        out = Release(mean, len(self._staleness), list(self._staleness), loss, n)
        self._sum[:] = 0.0
        self._staleness.clear()
        self._losses.clear()
        self.version += 1
        return out
