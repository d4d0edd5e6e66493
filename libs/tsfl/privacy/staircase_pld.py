"""The staircase mechanism's privacy loss distribution, built from its own masses.

dp-accounting has no staircase event, and borrowing the Gaussian's subsampling
amplification for it would be wrong (UDP-FL, arXiv 2407.14710, accounts each
mechanism from its own distribution). Here the PLD comes from the mechanism itself:

For the worst-case shift Δ, the likelihood ratio f(x)/f(x − Δ) is constant (e^{-ε})
on [Δ, ∞), constant (e^{ε}) on (−∞, 0], and piecewise constant in between, with
breakpoints {0, γΔ, (1 − γ)Δ, Δ}. Binning the line at those points therefore loses
nothing: the privacy loss of the continuous mechanism equals that of the binned pair
of probability mass functions, which ``from_two_probability_mass_functions`` turns
into a PLD (exact up to its discretisation of loss values, rounded pessimistically).

Poisson subsampling with rate q (add/remove adjacency) is the pair
((1 − q)·μ₀ + q·μ_Δ, μ₀) for removal and (μ₀, (1 − q)·μ₀ + q·μ_Δ) for addition
(Zhu, Dong & Wang, "Optimal accounting of differential privacy via characteristic
function", AISTATS 2022, §2): valid for one scalar release. A release of d > 1
coordinates shares one sampling decision across them, so the per-coordinate pairs
do not compose into the subsampled product; there the accountant composes the
unsubsampled PLD d times and reports that no amplification was applied.
"""

from __future__ import annotations

import math

import numpy as np
from dp_accounting.pld import privacy_loss_distribution as pld_lib

from tsfl.privacy.mechanisms import StaircaseMechanism


def _bin_masses(mech: StaircaseMechanism) -> tuple[np.ndarray, np.ndarray]:
    d, g = mech.sensitivity, mech.g
    edges = sorted({0.0, g * d, (1 - g) * d, d})
    lo = np.array([-np.inf, *edges])
    hi = np.array([*edges, np.inf])
    p0 = mech.cdf(hi) - mech.cdf(lo)
    p1 = mech.cdf(hi - d) - mech.cdf(lo - d)
    return p0, p1


def _log_pmf(p: np.ndarray) -> dict[int, float]:
    return {i: math.log(v) for i, v in enumerate(p) if v > 0}


def staircase_pld(mech: StaircaseMechanism, sampling_rate: float = 1.0,
                  value_discretization_interval: float = 1e-4
                  ) -> pld_lib.PrivacyLossDistribution:
    """The PLD of one scalar staircase release, Poisson-subsampled at ``sampling_rate``."""
    if not 0.0 < sampling_rate <= 1.0:
        raise ValueError("sampling rate must be in (0, 1]")
    p0, p1 = _bin_masses(mech)
    kw = {"value_discretization_interval": value_discretization_interval,
          "pessimistic_estimate": True}
    if sampling_rate == 1.0:
        return pld_lib.from_two_probability_mass_functions(_log_pmf(p1), _log_pmf(p0),
                                                           symmetric=True, **kw)
    mix = (1 - sampling_rate) * p0 + sampling_rate * p1
    remove = pld_lib.from_two_probability_mass_functions(_log_pmf(p0), _log_pmf(mix),
                                                         symmetric=True, **kw)
    add = pld_lib.from_two_probability_mass_functions(_log_pmf(mix), _log_pmf(p0),
                                                      symmetric=True, **kw)
    return pld_lib.PrivacyLossDistribution(remove._pmf_remove, add._pmf_remove)


def staircase_privacy_loss_samples(mech: StaircaseMechanism, n: int,
                                   rng: np.random.Generator) -> np.ndarray:
    """Monte-Carlo draws of the privacy loss ln f(X)/f(X − Δ), X ~ staircase (for tests)."""
    from tsfl.privacy.noise import SeededNoise

    x = mech.sample(n, SeededNoise(int(rng.integers(2**63))))
    return np.log(mech.pdf(x)) - np.log(mech.pdf(x - mech.sensitivity))
