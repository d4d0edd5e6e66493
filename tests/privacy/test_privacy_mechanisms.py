"""DP mechanisms, noise sources and clipping against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import optimize, stats

from tsfl.privacy import (
    AdaptiveClipper,
    GaussianMechanism,
    LaplaceMechanism,
    SecureNoise,
    SeededNoise,
    StaircaseMechanism,
    clip,
)
from tsfl.privacy.mechanisms import optimal_gamma, staircase_expected_abs

N = 200_000
SOURCES = {"seeded": lambda: SeededNoise(7), "secure": SecureNoise}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("mech", [
    GaussianMechanism(1.3, 0.5),
    LaplaceMechanism(0.8, 2.0),
    StaircaseMechanism(1.0, 0.5),
    StaircaseMechanism(0.2, 3.0),
    StaircaseMechanism(4.0, 1.0, gamma=0.3),
], ids=["gauss", "laplace", "stair-1", "stair-0.2", "stair-4-g.3"])
def test_samples_follow_the_mechanism_distribution(mech, source):
    x = mech.sample(N, SOURCES[source]())
    ks = stats.kstest(x, mech.cdf)
    assert ks.pvalue > 1e-3, ks
    # and the scale, not just the shape
    if isinstance(mech, GaussianMechanism):
        assert abs(x.std() / mech.std - 1) < 0.01
    elif isinstance(mech, LaplaceMechanism):
        assert abs(np.abs(x).mean() / mech.scale - 1) < 0.01
    else:
        assert abs(np.abs(x).mean() / mech.expected_abs() - 1) < 0.02


def test_secure_noise_is_not_reproducible_and_seeded_is():
    assert not np.array_equal(SecureNoise().normal(8), SecureNoise().normal(8))
    np.testing.assert_array_equal(SeededNoise([1, 2]).normal(8), SeededNoise([1, 2]).normal(8))
    u = SecureNoise().uniform(100_000)
    assert u.min() > 0 and u.max() < 1


@pytest.mark.parametrize("eps", [0.1, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("gamma", [None, 0.2, 0.9])
def test_staircase_density_ratio_stays_within_e_eps(eps, gamma):
    mech = StaircaseMechanism(eps, 1.0, gamma)
    x = np.linspace(-6, 6, 24_001)
    for shift in (1e-3, 0.25, 0.5, 0.999, 1.0):
        ratio = mech.pdf(x) / mech.pdf(x + shift)
        assert ratio.max() <= math.exp(eps) * (1 + 1e-12)
        assert ratio.min() >= math.exp(-eps) * (1 - 1e-12)
    # and the density integrates to one
    grid = np.linspace(-60 / eps, 60 / eps, 2_000_001)
    assert abs(np.trapezoid(mech.pdf(grid), grid) - 1) < 1e-3


@pytest.mark.parametrize("eps", [0.1, 1.0, 2.0, 5.0])
def test_optimal_gamma_minimises_the_expected_noise(eps):
    res = optimize.minimize_scalar(lambda g: staircase_expected_abs(eps, g),
                                   bounds=(1e-9, 1), method="bounded", options={"xatol": 1e-12})
    assert optimal_gamma(eps) == pytest.approx(res.x, abs=1e-6)
    # the staircase beats Laplace with the same ε at large ε (Geng & Viswanath, Fig. 2)
    if eps >= 2:
        assert staircase_expected_abs(eps, optimal_gamma(eps)) < 1 / eps


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.integers(1, 64),
              elements=st.floats(-1e6, 1e6, width=32)),
       st.floats(1e-3, 1e3), st.sampled_from(["l2", "l1", "linf"]))
def test_clipping_bounds_every_update(vec, c, norm):
    v = vec.copy()
    before = clip(v, c, norm)
    after = {"l2": lambda a: np.linalg.norm(a.astype(np.float64)),
             "l1": lambda a: np.abs(a.astype(np.float64)).sum(),
             "linf": lambda a: np.abs(a).max()}[norm](v)
    assert after <= c * (1 + 1e-5)
    if before <= c:
        np.testing.assert_array_equal(v, vec)  # within the bound: untouched


def test_clipping_refuses_a_bad_bound():
    with pytest.raises(ValueError, match="clip norm"):
        clip(np.ones(3, np.float32), 0.0)
    with pytest.raises(ValueError, match="norm"):
        clip(np.ones(3, np.float32), 1.0, "l3")


@pytest.mark.parametrize("quantile", [0.3, 0.5, 0.8])
def test_adaptive_clipping_tracks_the_target_quantile(quantile):
    rng = np.random.default_rng(0)
    clipper = AdaptiveClipper(0.05, quantile, learning_rate=0.2, count_stddev=100 / 20)
    source = SeededNoise(3)
    history = []
    for _ in range(400):
        norms = rng.lognormal(mean=0.0, sigma=0.5, size=100)  # true quantiles known
        clipper.update(int((norms <= clipper.clip_norm).sum()), 100, 100.0, source)
        history.append(clipper.clip_norm)
    true_q = float(stats.lognorm(s=0.5).ppf(quantile))
    assert np.mean(history[-100:]) == pytest.approx(true_q, rel=0.1)


def test_adaptive_clipping_splits_the_noise_budget():
    z = AdaptiveClipper.update_noise_multiplier(1.0, 5.0)
    assert z > 1.0 and (z**-2 + (2 * 5.0) ** -2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="exceed half"):
        AdaptiveClipper.update_noise_multiplier(1.0, 0.4)
