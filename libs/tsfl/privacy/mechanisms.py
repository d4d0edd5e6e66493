"""Additive noise mechanisms, vectorised over a flat float32 update.

Each mechanism is calibrated to a sensitivity in one norm: the Gaussian to L2, the
Laplace to L1, the staircase per coordinate (L∞). Clipping in the same norm
(:mod:`tsfl.privacy.clipping`) is what bounds that sensitivity.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from scipy import stats

from tsfl.privacy.noise import NoiseSource


class Mechanism(ABC):
    name: str
    norm: str  # the norm the sensitivity is measured in: "l2", "l1" or "linf"

    @abstractmethod
    def sample(self, size: int, source: NoiseSource) -> np.ndarray:
        """``size`` i.i.d. noise values (float64)."""

    def add_noise(self, vector: np.ndarray, source: NoiseSource) -> np.ndarray:
        """``vector`` + noise, as a new float32 array."""
        return (vector.astype(np.float64) + self.sample(vector.shape[0], source)
                ).astype(np.float32)

    @abstractmethod
    def cdf(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class GaussianMechanism(Mechanism):
    """N(0, (z·Δ)²) per coordinate; Δ is the L2 sensitivity, z the noise multiplier."""

    noise_multiplier: float
    sensitivity: float
    name = "gaussian"
    norm = "l2"

    @property
    def std(self) -> float:
        return self.noise_multiplier * self.sensitivity

    def sample(self, size: int, source: NoiseSource) -> np.ndarray:
        return self.std * source.normal(size)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return stats.norm.cdf(x, scale=self.std)


@dataclass(frozen=True)
class LaplaceMechanism(Mechanism):
    """Lap(b) per coordinate with b = z·Δ, Δ the L1 sensitivity: (1/z)-DP (Dwork et al.
    2006), with the PLD accountant's tighter (ε, δ) under composition."""

    noise_multiplier: float
    sensitivity: float
    name = "laplace"
    norm = "l1"

    @property
    def scale(self) -> float:
        return self.noise_multiplier * self.sensitivity

    def sample(self, size: int, source: NoiseSource) -> np.ndarray:
        return self.scale * source.laplace(size)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return stats.laplace.cdf(x, scale=self.scale)


@dataclass(frozen=True)
class StaircaseMechanism(Mechanism):
    """The staircase mechanism (Geng & Viswanath, "The Optimal Mechanism in Differential
    Privacy", ISIT 2014 / arXiv 1212.1186), ε-DP per coordinate for sensitivity Δ.

    Density (Eq. 5): with b = e^{-ε} and a(γ) = (1 − b) / (2Δ(γ + (1 − γ)b)),
    f(x) = a·b^k on |x| ∈ [kΔ, (k + γ)Δ) and a·b^{k+1} on |x| ∈ [(k + γ)Δ, (k + 1)Δ).
    Sampling (Algorithm 1): X = S·((1 − B)(G + γU) + B(G + γ + (1 − γ)U))·Δ with a fair
    sign S, G ~ Geometric(1 − b) on {0, 1, …}, B ~ Bernoulli(1 − γ/(γ + (1 − γ)b)),
    U ~ Uniform(0, 1). ``gamma=None`` takes the γ* that minimises E|X| (Theorem 3).
    """

    epsilon: float
    sensitivity: float
    gamma: float | None = None
    name = "staircase"
    norm = "linf"

    def __post_init__(self) -> None:
        if self.epsilon <= 0 or self.sensitivity <= 0:
            raise ValueError("staircase needs epsilon > 0 and sensitivity > 0")
        if self.gamma is None:
            object.__setattr__(self, "gamma", optimal_gamma(self.epsilon))
        elif not 0.0 < self.gamma <= 1.0:
            raise ValueError("staircase gamma must be in (0, 1]")

    @property
    def g(self) -> float:
        assert self.gamma is not None
        return self.gamma

    @property
    def b(self) -> float:
        return math.exp(-self.epsilon)

    @property
    def a(self) -> float:
        b, g = self.b, self.g
        return (1 - b) / (2 * self.sensitivity * (g + (1 - g) * b))

    def sample(self, size: int, source: NoiseSource) -> np.ndarray:
        b, g = self.b, self.g
        u = source.uniform(4 * size).reshape(4, size)
        sign = np.where(u[0] < 0.5, -1.0, 1.0)
        geom = np.floor(np.log(u[1]) / math.log(b))  # P(G = k) = (1 − b) b^k
        upper = u[2] >= g / (g + (1 - g) * b)  # B = 1: the outer step of the stair
        steps = np.where(upper, geom + g + (1 - g) * u[3], geom + g * u[3])
        return sign * steps * self.sensitivity

    def pdf(self, x: np.ndarray) -> np.ndarray:
        y = np.abs(np.asarray(x, dtype=np.float64)) / self.sensitivity
        k = np.floor(y)
        outer = (y - k) >= self.g
        return self.a * self.b ** (k + outer)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        y = np.minimum(np.abs(x) / self.sensitivity, 1e300)  # ±inf → the tail limit
        k = np.floor(y)
        r = y - k
        b, g, d = self.b, self.g, self.sensitivity
        full = (1 - b ** k) / 2  # mass of the k whole periods in [0, kΔ)
        part = np.where(r < g, self.a * b ** k * r * d,
                        self.a * b ** k * (g * d + b * (r - g) * d))
        half = full + part
        return np.where(x >= 0, 0.5 + half, 0.5 - half)

    def expected_abs(self) -> float:
        return staircase_expected_abs(self.epsilon, self.g) * self.sensitivity


def staircase_expected_abs(epsilon: float, gamma: float) -> float:
    """E|X| of the staircase with Δ = 1, in closed form (sum of the geometric series)."""
    b, g = math.exp(-epsilon), gamma
    a = (1 - b) / (2 * (g + (1 - g) * b))
    s0 = 1 / (1 - b)  # Σ b^k
    s1 = b / (1 - b) ** 2  # Σ k b^k
    # ∫_k^{k+g} x dx = g k + g²/2 ;  ∫_{k+g}^{k+1} x dx = (1-g) k + (1 - g²)/2
    inner = g * s1 + g * g / 2 * s0
    outer = b * ((1 - g) * s1 + (1 - g * g) / 2 * s0)
    return 2 * a * (inner + outer)


def optimal_gamma(epsilon: float) -> float:
    """γ* = 1 / (1 + e^{ε/2}), the minimiser of E|X| (L1 cost; Geng & Viswanath,
    Theorem 3). Tests check it against a numerical minimisation of
    :func:`staircase_expected_abs`."""
    return 1.0 / (1.0 + math.exp(epsilon / 2))


def build_mechanism(name: str, *, noise_multiplier: float | None = None,
                    sensitivity: float, epsilon: float | None = None) -> Mechanism:
    if name == "gaussian":
        return GaussianMechanism(float(noise_multiplier or 0.0), sensitivity)
    if name == "laplace":
        return LaplaceMechanism(float(noise_multiplier or 0.0), sensitivity)
    if name == "staircase":
        if epsilon is None:
            raise ValueError("the staircase mechanism needs its per-release epsilon")
        return StaircaseMechanism(epsilon, sensitivity)
    raise ValueError(f"unknown mechanism {name!r}")
