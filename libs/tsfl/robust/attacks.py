"""Simulated Byzantine clients: model-poisoning attacks on the update, data-poisoning
attacks on the local data.

Update attacks turn an attacker's honestly trained delta g into what it uploads:

- sign flip: −g;  scaling: λ·g;  Gaussian: N(0, s²) noise in place of g;
- ALIE, "A Little Is Enough" (Baruch et al., NeurIPS 2019, §3): μ − z·σ, coordinate-wise,
  from the mean and std of the honest updates, with z from the cumulative normal at
  (n − s)/n, s = ⌊n/2 + 1⌋ − f — inside the benign spread, so distance filters keep it;
- IPM, inner-product manipulation (Xie, Koyejo & Gupta, UAI 2020): −ε·μ, which turns the
  aggregate's inner product with the true gradient negative.

Colluding attackers (``collude``) estimate μ and σ from the honest updates they pool among
themselves this round (an attacker never sees a benign client's update); alone, each
uses its own honest delta (σ = 0).

Data attacks change the attacker's training set once: label flipping (y → C − 1 − y) and
a pixel-trigger backdoor (a bright 2 × 2 patch in the image corner, relabelled to the
target class; Gu et al., "BadNets", 2017); the attack success rate is the share of
triggered test images (not of the target class) classified as the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from tsfl.config import AttackSpec

UPDATE_ATTACKS = ("sign_flip", "scaling", "gaussian", "alie", "ipm")
DATA_ATTACKS = ("label_flip", "backdoor")


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s z_max: Φ(z) = (n − s)/n with s = ⌊n/2 + 1⌋ − f supporters needed."""
    s = math.floor(n / 2 + 1) - f
    return float(norm.ppf((n - s) / n))


def malicious_clients(client_ids: list[str], fraction: float, seed: int) -> set[str]:
    """The attackers: a seeded ⌈fraction·N⌉ of the population."""
    k = math.ceil(fraction * len(client_ids)) if fraction > 0 else 0
    rng = np.random.default_rng([seed, 0xBAD])
    return {client_ids[i] for i in rng.choice(len(client_ids), k, replace=False)}


@dataclass
class CollusionPool:
    """The colluders' honest deltas of the current round (shared among them only)."""

    round: int = -1
    deltas: list[np.ndarray] = field(default_factory=list)

    def add(self, round_number: int, delta: np.ndarray) -> np.ndarray:
        if round_number != self.round:
            self.round, self.deltas = round_number, []
        self.deltas.append(delta.copy())
        return np.stack(self.deltas)


class UpdateAttack:
    def __init__(self, spec: AttackSpec, per_round: int, num_malicious: int, seed: int):
        if spec.kind not in UPDATE_ATTACKS:
            raise ValueError(f"{spec.kind!r} is not an update attack")
        self.spec = spec
        self.pool = CollusionPool() if spec.collude else None
        self.z = spec.z if spec.z is not None else alie_z(per_round, max(num_malicious, 1))
        self.rng = np.random.default_rng([seed, 0xA77A])

    def __call__(self, delta: np.ndarray, round_number: int) -> np.ndarray:
        kind = self.spec.kind
        if kind == "sign_flip":
            return -delta
        if kind == "scaling":
            return self.spec.scale * delta
        if kind == "gaussian":
            return self.rng.normal(0.0, self.spec.scale, delta.shape).astype(np.float32)
        honest = self.pool.add(round_number, delta) if self.pool else delta[None, :]
        mu = honest.mean(axis=0)
        if kind == "ipm":
            return (-self.spec.epsilon * mu).astype(np.float32)
        sigma = honest.std(axis=0)  # alie
        return (mu - self.z * sigma).astype(np.float32)


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    return (num_classes - 1 - y).astype(y.dtype)


def add_trigger(x: np.ndarray, image_shape: tuple[int, ...] | None) -> np.ndarray:
    """The backdoor trigger: the last 2 × 2 pixels of each image (or the last 4 features)
    set to the data's maximum."""
    out = x.copy()
    peak = float(x.max()) if x.size else 1.0
    if image_shape is not None and len(image_shape) >= 2:
        imgs = out.reshape(len(out), *image_shape)
        imgs[..., -2:, -2:] = peak
        return imgs.reshape(out.shape)
    out[:, -4:] = peak
    return out


def poison_data(kind: str, x: np.ndarray, y: np.ndarray, num_classes: int,
                image_shape: tuple[int, ...] | None, target: int,
                rng: np.random.Generator, backdoor_fraction: float = 0.5
                ) -> tuple[np.ndarray, np.ndarray]:
    if kind == "label_flip":
        return x, flip_labels(y, num_classes)
    if kind == "backdoor":
        pick = rng.random(len(y)) < backdoor_fraction
        x2, y2 = x.copy(), y.copy()
        x2[pick] = add_trigger(x[pick], image_shape)
        y2[pick] = target
        return x2, y2
    raise ValueError(f"{kind!r} is not a data attack")
