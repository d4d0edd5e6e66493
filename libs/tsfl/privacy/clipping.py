"""Clipping bounds each client's contribution, which is what makes noise calibrate.

``clip_l2`` / ``clip_l1`` scale an update onto the ball of radius C in that norm;
``clip_linf`` clamps each coordinate to [−C, C]. All work in place on float32 and
return the norm before clipping.

:class:`AdaptiveClipper` implements Andrew, Thakkar, McMahan & Ramaswamy,
"Differentially Private Learning with Adaptive Clipping" (NeurIPS 2021): the clip norm
tracks a target quantile γ of the update norms with the geometric rule (Eq. 3)

    C ← C · exp(−η_C (b̃ − γ)),   b̃ = (Σᵢ (1[‖Δᵢ‖ ≤ C] − ½) + N(0, σ_b²)) / n + ½,

where n is the expected cohort size; centring the indicators at ½ halves the count's
sensitivity to ½. The clipped count is itself a Gaussian query, so
its noise comes out of the round's budget (Theorem 1): with total noise multiplier z,
the update sum gets z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2), and the two releases together are
accounted as one Gaussian with multiplier z. The count's noise is discrete Gaussian on the
grid 2^-20·Z (:mod:`tsfl.privacy.discrete`): γ·N_Z(0, (σ_b/γ)²) with γ = 2^-20. The centred
count is a multiple of ½, so it lies on the grid and rounding adds no sensitivity; the
noisy count is exact in float64, so its low bits say nothing about the count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg.blas import snrm2

from tsfl.privacy.discrete import discrete_gaussian
from tsfl.privacy.noise import NoiseSource

COUNT_GRID = 2.0 ** -20  # the clipped count's noise lives on COUNT_GRID·Z


def l2_norm(vector: np.ndarray) -> float:
    return float(snrm2(vector)) if vector.dtype == np.float32 else float(
        np.linalg.norm(vector))


def clip_l2(vector: np.ndarray, clip_norm: float) -> float:
    """Scale ``vector`` in place so ‖v‖₂ ≤ ``clip_norm``; returns the norm before."""
    norm = l2_norm(vector)
    if norm > clip_norm:
        vector *= np.float32(clip_norm / norm)
    return norm


def clip_l1(vector: np.ndarray, clip_norm: float) -> float:
    norm = float(np.abs(vector).sum(dtype=np.float64))
    if norm > clip_norm:
        vector *= np.float32(clip_norm / norm)
    return norm


def clip_linf(vector: np.ndarray, clip_norm: float) -> float:
    norm = float(np.abs(vector).max()) if vector.size else 0.0
    if norm > clip_norm:
        np.clip(vector, -clip_norm, clip_norm, out=vector)
    return norm


CLIPPERS = {"l2": clip_l2, "l1": clip_l1, "linf": clip_linf}


def clip(vector: np.ndarray, clip_norm: float, norm: str = "l2") -> float:
    """Clip in ``norm`` (the norm its mechanism's sensitivity is measured in)."""
    try:
        fn = CLIPPERS[norm]
    except KeyError:
        raise ValueError(f"unknown norm {norm!r}") from None
    if not math.isfinite(clip_norm) or clip_norm <= 0:
        raise ValueError("clip norm must be finite and > 0")
    return fn(vector, clip_norm)


@dataclass
class AdaptiveClipper:
    """Quantile-tracking clip norm (Andrew et al. 2021, Algorithm 1)."""

    clip_norm: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float = 0.0  # σ_b; 0 only without DP

    def __post_init__(self) -> None:
        if not 0.0 < self.target_quantile < 1.0:
            raise ValueError("target quantile must be in (0, 1)")
        if self.clip_norm <= 0 or self.learning_rate <= 0 or self.count_stddev < 0:
            raise ValueError("clip norm and learning rate must be > 0, σ_b ≥ 0")

    def update(self, unclipped: int, participants: int, expected_clients: float,
               source: NoiseSource) -> float:
        """Apply one round: ``unclipped`` of ``participants`` updates had norm ≤ C.

        Returns the new C."""
        noise = 0.0
        if self.count_stddev:
            k = discrete_gaussian(self.count_stddev / COUNT_GRID, 1, source)
            noise = float(k[0]) * COUNT_GRID
        b = (unclipped - participants / 2 + noise) / expected_clients + 0.5
        self.clip_norm *= math.exp(-self.learning_rate * (b - self.target_quantile))
        return self.clip_norm

    @staticmethod
    def update_noise_multiplier(total: float, count_stddev: float) -> float:
        """z_Δ for the update sum when the count takes its share of total z (Theorem 1)."""
        if count_stddev <= total / 2:
            raise ValueError(f"clipped-count stddev {count_stddev} must exceed half the noise "
                             f"multiplier ({total / 2}) to leave budget for the updates")
        return (total ** -2 - (2 * count_stddev) ** -2) ** -0.5
