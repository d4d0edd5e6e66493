"""What protects the values that cross the cut: Gaussian DP on activations, label DP on
the gradients sent back.

**Cut-layer DP** (the feature party protects its features from the label party and the
relay): each entity's activation row a_i is clipped to L2 norm C and released as
a_i · min(1, C/‖a_i‖) + N(0, (zC)² I) — the Gaussian mechanism (Dwork & Roth 2014,
Thm A.1) with sensitivity C under add/remove of one entity's release. Each entity's row
crosses once per epoch (disjoint batches: parallel composition), so E epochs compose E
Gaussian events of multiplier z, accounted by :class:`tsfl.privacy.accounting.
PrivacyAccountant` (PLD). The guarantee is per released activation: the bottom model is
trained on clear features, so the dataset-level guarantee for the feature party's table
would additionally need DP-SGD on the bottom model (docs/privacy.md).

**Label DP by randomized response** (the label party protects y from the feature
parties): before training, each training label is replaced once by ỹ — kept with
probability e^ε/(e^ε + K − 1), else uniform over the other K − 1 classes (Warner 1965;
Ghazi et al., "Deep Learning with Label Differential Privacy", NeurIPS 2021). The label
party computes every returned gradient and trains its top model on ỹ only, so all a feature
party sees is post-processing of ỹ: ε-label-DP for the whole job, whatever the number of
epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from tsfl.privacy.accounting import PrivacyAccountant, RoundEvent
from tsfl.privacy.noise import NoiseSource


@dataclass
class CutLayerDP:
    """Clip each activation row to ``clip`` and add Gaussian noise of std
    ``noise_multiplier · clip``; accounts one Gaussian event per epoch."""

    clip: float
    noise_multiplier: float
    delta: float
    noise: NoiseSource
    accountant: PrivacyAccountant = field(init=False)

    def __post_init__(self) -> None:
        if self.clip <= 0 or self.noise_multiplier <= 0:
            raise ValueError("clip and noise_multiplier must be positive")
        self.accountant = PrivacyAccountant(self.delta)

    def clip_rows(self, a: torch.Tensor) -> torch.Tensor:
        """a_i · min(1, C / ‖a_i‖) (differentiable: the bottom model trains through it)."""
        norms = a.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return a * torch.clamp(self.clip / norms, max=1.0)

    def noised(self, clipped: np.ndarray) -> np.ndarray:
        z = self.noise.normal(clipped.size).reshape(clipped.shape)
        return (clipped + self.noise_multiplier * self.clip * z).astype(np.float32)

    def end_epoch(self) -> float:
        """Compose this epoch's release (every row once); ε so far."""
        self.accountant.compose(RoundEvent("gaussian", sampling="none",
                                           noise_multiplier=self.noise_multiplier))
        return self.accountant.epsilons().epsilon


def randomized_response(y: np.ndarray, num_classes: int, epsilon: float,
                        noise: NoiseSource) -> np.ndarray:
    """ỹ: each label kept w.p. e^ε/(e^ε+K−1), else a uniform other class (ε-label-DP)."""
    if epsilon <= 0 or num_classes < 2:
        raise ValueError("epsilon must be positive and there must be ≥ 2 classes")
    keep = math.exp(epsilon) / (math.exp(epsilon) + num_classes - 1)
    u = noise.uniform(2 * len(y))
    flip = u[: len(y)] >= keep
    shift = 1 + np.minimum((u[len(y):] * (num_classes - 1)).astype(np.int64),
                           num_classes - 2)
    return np.where(flip, (y + shift) % num_classes, y).astype(np.int64)


def keep_probability(epsilon: float, num_classes: int) -> float:
    """P(ỹ = y) under :func:`randomized_response` — also the best any label-inference
    attack on the gradients can do per example given ỹ exactly."""
    return math.exp(epsilon) / (math.exp(epsilon) + num_classes - 1)
