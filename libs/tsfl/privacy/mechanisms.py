"""Additive noise mechanisms, vectorised over a flat float32 update.

Each mechanism is calibrated to a sensitivity in one norm: the Gaussian to L2, the
Laplace to L1, the staircase per coordinate (L∞). Clipping in the same norm
(:mod:`tsfl.privacy.clipping`) is what bounds that sensitivity.

The Gaussian and Laplace mechanisms work on a grid γ·Z, with integer noise from
:mod:`tsfl.privacy.discrete`, against Mironov's least-significant-bit attack (CCS 2012):

1. γ = the largest power of two with γ·√d ≤ 2^-20·Δ (Gaussian, L2) or γ·d ≤ 2^-20·Δ
   (Laplace, L1), d the number of coordinates (:func:`grid_step`);
2. q = round(x/γ) in float64 (x/γ is exact: γ is a power of two), as int64; refused with
   ValueError if |x/γ| > 2^52 anywhere (or x is not finite): not exactly representable;
3. k = integer noise: N_Z(0, σ²) with σ = z·(Δ/γ + √d) (Gaussian) or Lap_Z(b) with
   b = z·(Δ/γ + d) (Laplace), both rounded up by a factor 1 + 2^-50;
4. release (q + k)·γ as float32.

Rounding moves each coordinate by at most γ/2, so two inputs at distance ‖x − x'‖ ≤ Δ give
grid points at distance ‖q − q'‖₂ ≤ Δ/γ + √d (‖q − q'‖₁ ≤ Δ/γ + d): the noise is z times
the sensitivity *after* rounding, so the accounted noise multiplier z holds unchanged —
pure ε = 1/z for the discrete Laplace; for the discrete Gaussian, Canonne, Kamath &
Steinke (NeurIPS 2020) show the same ½(Δ/σ)²-concentrated DP as the continuous one and
(ε, δ) guarantees that match it for σ this large (σ ≥ 2^20·z, as Δ/γ ≥ 2^20·√d). The PLD
accountant keeps the continuous Gaussian's and Laplace's privacy loss distributions.
Rounding inflates the noise by a factor 1 + γ√d/Δ ≤ 1 + 2^-20 (1 + γd/Δ for the Laplace).
Every output is a multiple of γ whatever the input, and so is its float32 rounding (exact,
or a multiple of a float32 ulp, a power of two above γ): the set of values an output can
take no longer depends on the input. What is left of floating point in the
samplers, and its total-variation bound, is in :mod:`tsfl.privacy.discrete`
(:func:`~tsfl.privacy.discrete.float_residual_delta`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from scipy import stats

from tsfl.privacy.discrete import discrete_gaussian, discrete_laplace
from tsfl.privacy.noise import NoiseSource

GRID_INFLATION = 2.0 ** -20  # rounding may add at most this fraction of Δ to the sensitivity
MAX_GRID_UNITS = 2.0 ** 52  # |x/γ| above this cannot be rounded exactly in float64
_ROUND_UP = 1.0 + 2.0 ** -50  # covers the float rounding of the noise scale


def grid_step(sensitivity: float, size: int, norm: str) -> float:
    """γ: the largest power of two with γ·√d ≤ 2^-20·Δ (``norm`` "l2") or γ·d ≤ 2^-20·Δ
    ("l1"), d = max(``size``, 1)."""
    if not (math.isfinite(sensitivity) and sensitivity > 0):
        raise ValueError(f"the grid needs a finite sensitivity > 0, got {sensitivity!r}")
    if norm not in ("l1", "l2"):
        raise ValueError(f"grid step for l1 or l2, not {norm!r}")
    d = max(int(size), 1)
    spread = math.sqrt(d) if norm == "l2" else float(d)
    bound = GRID_INFLATION * sensitivity
    gamma = math.ldexp(1.0, math.frexp(bound / spread)[1] - 1)  # ≤ bound/spread < 2γ
    while gamma * spread > bound:  # guard the rounding of bound/spread
        gamma /= 2
    if gamma < 2.0 ** -1000:
        raise ValueError(f"sensitivity {sensitivity!r} too small for a grid over {d} "
                         "coordinates")
    return gamma


def to_grid(vector: np.ndarray, gamma: float) -> np.ndarray:
    """round(vector/γ) as int64; ValueError where |vector/γ| > 2^52 or not finite."""
    scaled = np.asarray(vector, dtype=np.float64) / gamma  # exact: γ is a power of two
    if scaled.size:
        top = float(np.max(np.abs(scaled)))
        if not top <= MAX_GRID_UNITS:  # also NaN
            raise ValueError(
                f"cannot put the update on the noise grid: |value| up to "
                f"{top * gamma:.6g} exceeds 2^52·γ = {MAX_GRID_UNITS * gamma:.6g} (γ = "
                f"{gamma:.6g}), or is not finite; clip it first")
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int64)


def from_grid(points: np.ndarray, gamma: float) -> np.ndarray:
    """points·γ as float32 (float64 first: exact while |points| ≤ 2^53)."""
    out = points.astype(np.float64)
    out *= gamma
    return out.astype(np.float32)


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


class _GridMechanism(Mechanism):
    """Noise on the grid γ·Z (module docstring); subclasses give the grid and the noise."""

    @abstractmethod
    def grid(self, size: int) -> tuple[float, float]:
        """(γ, the noise scale in grid units) for a release of ``size`` coordinates."""

    @abstractmethod
    def _integer_noise(self, scale: float, size: int, source: NoiseSource) -> np.ndarray: ...

    def _noise(self, size: int, source: NoiseSource) -> tuple[float, np.ndarray]:
        gamma, scale = self.grid(size)
        if not scale <= MAX_GRID_UNITS:
            raise ValueError(f"{self.name} noise of {scale:.4g} grid steps exceeds 2^52: the "
                             f"noise multiplier is too large for {size} coordinates")
        return gamma, self._integer_noise(scale, size, source)

    def sample(self, size: int, source: NoiseSource) -> np.ndarray:
        """``size`` noise values γ·k (float64), γ as :meth:`add_noise` takes it for a
        vector of ``size`` coordinates."""
        gamma, k = self._noise(size, source)
        out = k.astype(np.float64)
        out *= gamma
        return out

    def add_noise(self, vector: np.ndarray, source: NoiseSource) -> np.ndarray:
        """(round(vector/γ) + k)·γ as a new float32 array of ``vector``'s shape."""
        gamma, _ = self.grid(vector.size)
        q = to_grid(vector, gamma)
        q += self._noise(q.size, source)[1].reshape(q.shape)
        return from_grid(q, gamma)


@dataclass(frozen=True)
class GaussianMechanism(_GridMechanism):
    """Discrete Gaussian noise γ·N_Z(0, σ²) per coordinate, σ = z·(Δ/γ + √d) ≈ z·Δ/γ; Δ is
    the L2 sensitivity, z the noise multiplier (module docstring)."""

    noise_multiplier: float
    sensitivity: float
    name = "gaussian"
    norm = "l2"

    @property
    def std(self) -> float:
        """z·Δ: the accounted standard deviation (the grid's is within a factor 1 + 2^-20)."""
        return self.noise_multiplier * self.sensitivity

    def grid(self, size: int) -> tuple[float, float]:
        gamma = grid_step(self.sensitivity, size, "l2")
        sigma = self.noise_multiplier * (self.sensitivity / gamma + math.sqrt(max(size, 1)))
        return gamma, sigma * _ROUND_UP

    def _integer_noise(self, scale: float, size: int, source: NoiseSource) -> np.ndarray:
        return discrete_gaussian(scale, size, source)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """N(0, (z·Δ)²)'s, which the grid noise follows within its step γ."""
        return stats.norm.cdf(x, scale=self.std)


@dataclass(frozen=True)
class LaplaceMechanism(_GridMechanism):
    """Discrete Laplace noise γ·Lap_Z(b) per coordinate, b = z·(Δ/γ + d) ≈ z·Δ/γ, Δ the L1
    sensitivity: (1/z)-DP (Dwork et al. 2006), with the PLD accountant's tighter (ε, δ)
    under composition."""

    noise_multiplier: float
    sensitivity: float
    name = "laplace"
    norm = "l1"

    @property
    def scale(self) -> float:
        """z·Δ: the accounted scale (the grid's is within a factor 1 + 2^-20)."""
        return self.noise_multiplier * self.sensitivity

    def grid(self, size: int) -> tuple[float, float]:
        gamma = grid_step(self.sensitivity, size, "l1")
        b = self.noise_multiplier * (self.sensitivity / gamma + max(size, 1))
        return gamma, b * _ROUND_UP

    def _integer_noise(self, scale: float, size: int, source: NoiseSource) -> np.ndarray:
        return discrete_laplace(scale, size, source)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """Lap(z·Δ)'s, which the grid noise follows within its step γ."""
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

    Float-based, unlike the Gaussian and Laplace mechanisms: G, B and U come from float64
    logarithms and uniforms with 53 random bits (G by inversion, ⌊ln u / ln b⌋), and the
    noise is added to the float64 input and rounded to float32. So it is open to Mironov's
    least-significant-bit attack (CCS 2012): which float32 values an output can take
    depends on the input, and no total-variation bound against the exact density exists
    (a float sample is a point mass); :func:`~tsfl.privacy.discrete.float_residual_delta`
    refuses it. Beyond that, u ≥ 2^-53 caps G at ⌊53·ln 2/ε⌋, dropping a tail of mass about
    2^-53, and every float probability carries a relative error of about 2^-52.
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
