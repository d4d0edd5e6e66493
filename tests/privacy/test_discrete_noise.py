"""Integer DP noise (discrete Laplace, discrete Gaussian) and the grid mechanisms.

The pmfs here are written out from their definitions (Canonne, Kamath & Steinke 2020), not
taken from the module under test; normalisers and moments are summed numerically.
"""

from __future__ import annotations

import math
from decimal import Context, Decimal
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from tsfl.privacy import (
    AdaptiveClipper,
    GaussianMechanism,
    LaplaceMechanism,
    SecureNoise,
    SeededNoise,
    StaircaseMechanism,
)
from tsfl.privacy import discrete as dn
from tsfl.privacy.discrete import discrete_gaussian, discrete_laplace, float_residual_delta
from tsfl.privacy.mechanisms import from_grid, grid_step, to_grid

SOURCES = {"seeded": lambda: SeededNoise(11), "secure": SecureNoise}
N = 200_000


def gauss_pmf(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Support and pmf of N_Z(0, σ²), summed out to ±(40σ + 40) (the rest is < e^{-800})."""
    k = int(40 * sigma) + 40
    y = np.arange(-k, k + 1)
    w = np.exp(-(y.astype(np.float64) ** 2) / (2 * sigma**2))
    return y, w / w.sum()


def laplace_pmf(t: float) -> tuple[np.ndarray, np.ndarray]:
    k = int(60 * t) + 60
    y = np.arange(-k, k + 1)
    return y, math.tanh(1 / (2 * t)) * np.exp(-np.abs(y) / t)


def laplace_cdf(y: np.ndarray, t: float) -> np.ndarray:
    """P[Y ≤ y] of Lap_Z(t): q^{−y}/(1 + q) below 0, 1 − q^{y+1}/(1 + q) from 0 on."""
    y = np.asarray(y, dtype=np.float64)
    q = math.exp(-1 / t)
    return np.where(y < 0, np.exp(y / t) / (1 + q), 1 - np.exp(-(y + 1) / t) / (1 + q))


def chi2_pmf(samples: np.ndarray, support: np.ndarray, pmf: np.ndarray) -> float:
    """Chi-square p-value of ``samples`` against a pmf on consecutive integers: one bin per
    value with ≥ 5 expected, each tail pooled into its edge bin."""
    n = samples.size
    big = np.flatnonzero(n * pmf >= 5)
    lo, hi = support[big[0]], support[big[-1]]
    exp = n * pmf[big[0]:big[-1] + 1]
    exp[0] += n * pmf[:big[0]].sum()
    exp[-1] += n * pmf[big[-1] + 1:].sum()
    obs = np.bincount(np.clip(samples, lo, hi) - lo, minlength=hi - lo + 1).astype(float)
    return float(stats.chisquare(obs, exp * n / exp.sum()).pvalue)


def chi2_cdf(samples: np.ndarray, edges: np.ndarray, cdf) -> float:
    """Chi-square p-value over bins (e_{i−1}, e_i] given P[Y ≤ e] = cdf(e)."""
    probs = np.diff(np.concatenate([[0.0], cdf(edges), [1.0]]))
    obs = np.bincount(np.searchsorted(edges, samples, side="left"),
                      minlength=edges.size + 1).astype(float)
    return float(stats.chisquare(obs, probs * samples.size).pvalue)


# --- the samplers against their pmfs -------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("sigma", [0.5, 3.0, 40.0, 1000.0])
def test_discrete_gaussian_matches_its_pmf(sigma, source):
    x = discrete_gaussian(sigma, N, SOURCES[source]())
    assert x.dtype == np.int64 and x.shape == (N,)
    support, pmf = gauss_pmf(sigma)
    assert chi2_pmf(x, support, pmf) > 1e-4
    # moments against the exact ones, within 5 standard errors
    var = float((support.astype(float) ** 2 * pmf).sum())
    m4 = float((support.astype(float) ** 4 * pmf).sum())
    assert abs(x.mean()) < 5 * math.sqrt(var / N)
    assert abs(x.var() - var) < 5 * math.sqrt((m4 - var**2) / N)
    assert var <= sigma**2  # below σ² (by e^{−2π²σ²}-small amounts but for small σ)


def test_discrete_gaussian_variance_is_below_sigma_squared_measurably():
    """At σ = ½ the gap is large: samples follow Var[N_Z] = 0.2150…, not σ² = 0.25, and not
    a rounded continuous Gaussian (which the chi-square test then rejects)."""
    sigma = 0.5
    support, pmf = gauss_pmf(sigma)
    var = float((support.astype(float) ** 2 * pmf).sum())
    assert var == pytest.approx(0.2150, abs=1e-4)
    x = discrete_gaussian(sigma, N, SeededNoise(3))
    se = math.sqrt((float((support.astype(float) ** 4 * pmf).sum()) - var**2) / N)
    assert abs(x.var() - var) < 5 * se and abs(x.var() - sigma**2) > 20 * se
    rounded = np.rint(np.random.default_rng(3).normal(0, sigma, N)).astype(np.int64)
    assert chi2_pmf(rounded, support, pmf) < 1e-12  # the test has the power to fail


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("t", [0.5, 3.0, 40.0])
def test_discrete_laplace_matches_its_pmf(t, source):
    x = discrete_laplace(t, N, SOURCES[source]())
    support, pmf = laplace_pmf(t)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    assert chi2_pmf(x, support, pmf) > 1e-4
    q = math.exp(-1 / t)
    var = 2 * q / (1 - q) ** 2  # Var of Lap_Z(t)
    m4 = float((support.astype(float) ** 4 * pmf).sum())
    assert abs(x.mean()) < 5 * math.sqrt(var / N)
    assert abs(x.var() - var) < 5 * math.sqrt((m4 - var**2) / N)


@pytest.mark.parametrize("source", SOURCES)
def test_large_scales_match_their_cdfs(source):
    """The scales the grid mechanisms use (σ, t ≈ 2^20·√d… 2^20·d), where the power-of-two
    block U is ~40 bits wide: binned at 60 quantiles."""
    t = 3.3e12
    x = discrete_laplace(t, N, SOURCES[source]())
    edges = np.unique(np.round(stats.laplace.ppf(np.linspace(0.005, 0.995, 60), scale=t)))
    assert chi2_cdf(x, edges, lambda e: laplace_cdf(e, t)) > 1e-4
    sigma = 1.7e9
    x = discrete_gaussian(sigma, N, SOURCES[source]())
    edges = np.unique(np.round(stats.norm.ppf(np.linspace(0.005, 0.995, 60), scale=sigma)))
    # P[Y ≤ e] = Φ((e + ½)/σ) up to terms of order e^{−2π²σ²} (Poisson summation)
    assert chi2_cdf(x, edges, lambda e: stats.norm.cdf((e + 0.5) / sigma)) > 1e-4


def test_tiny_scales_are_zero_and_bad_ones_refused():
    src = SeededNoise(1)
    assert not discrete_gaussian(1 / 32, 1000, src).any()
    assert not discrete_laplace(2.0**-9, 1000, src).any()
    assert discrete_gaussian(0.3, 10_000, src).any()  # not cut off: P[Y ≠ 0] ≈ 2e^{−1/0.18}
    assert discrete_gaussian(0.0, 0, src).shape == (0,)
    for bad in (-1.0, math.nan, math.inf, 2.0**53):
        with pytest.raises(ValueError):
            discrete_gaussian(bad, 3, src)
        with pytest.raises(ValueError):
            discrete_laplace(bad, 3, src)


def test_seeded_samples_reproduce_and_secure_ones_do_not():
    a = discrete_gaussian(5e8, 1000, SeededNoise([4, 2]))
    np.testing.assert_array_equal(a, discrete_gaussian(5e8, 1000, SeededNoise([4, 2])))
    assert not np.array_equal(discrete_gaussian(5e8, 1000, SecureNoise()),
                              discrete_gaussian(5e8, 1000, SecureNoise()))


# --- the exact comparison behind every decision --------------------------------------


class _UniformsOnly:
    """A NoiseSource with nothing but ``uniform`` (the generic path of uniform_cells)."""

    secure = False

    def __init__(self, seed: int):
        self._inner = SeededNoise(seed)

    def uniform(self, size: int) -> np.ndarray:
        return self._inner.uniform(size)


def test_uniform_cells_are_exact_integers_over_a_power_of_two():
    class Fixed(_UniformsOnly):
        def uniform(self, size):
            return np.array([2.0**-53, 2 * 2.0**-53, 3 * 2.0**-53, 1 - 2.0**-53])

    np.testing.assert_array_equal(dn.uniform_bits(Fixed(0), 4), [0, 1, 1, 2**52 - 1])
    for src, bits in ((SecureNoise(), 52), (SeededNoise(1), 53), (_UniformsOnly(1), 52)):
        a, b = dn.uniform_cells(src, 100_000)
        assert b == bits and a.min() >= 0 and a.max() < 1
        k = a * 2.0**bits
        assert np.array_equal(k, np.floor(k))
        low = (k % 16).astype(int)  # the low bits are uniform too
        assert stats.chisquare(np.bincount(low, minlength=16)).pvalue > 1e-4


def _neg_ln(num: int, bits: int) -> Decimal:
    ctx = Context(prec=150)
    return -ctx.ln(ctx.divide(Decimal(num), Decimal(2) ** bits))


def test_slow_path_decides_exactly_on_its_refined_cell():
    """Whatever it answers, −ln W > x must hold on the whole cell it ended with (or fail on
    all of it), checked at 150 digits; x is put right at the cell's edge to force refining."""
    rng = np.random.default_rng(0)
    src = SeededNoise(5)
    refined = 0
    for _ in range(300):
        num = int(rng.integers(1, 2**52))
        mid = _neg_ln(2 * num + 1, 53)  # −ln of the cell's middle: ambiguous by construction
        x = Fraction(mid) + Fraction(int(rng.integers(-1000, 1000)), 10**25)
        w = dn._LazyUniform(num * 2.0**-52, 52, src)
        got = w.neg_log_exceeds(x)
        refined += w.bits > 52
        top, bottom = _neg_ln(w.num + 1, w.bits), _neg_ln(w.num, w.bits)
        assert (Fraction(top) > x) if got else (Fraction(bottom) <= x)
    assert refined > 250  # nearly all needed more bits
    # the bottom cell (W < 2^-52) and huge x
    w = dn._LazyUniform(0.0, 52, src)
    assert w.neg_log_exceeds(Fraction(30)) and not w.neg_log_exceeds(Fraction(10**6))


@pytest.mark.parametrize("case", ["gauss-0.5", "gauss-3", "laplace-3", "laplace-40"])
def test_forced_slow_path_still_matches_the_pmf(case, monkeypatch):
    """With the float margin widened to 100%, nearly every comparison goes to the exact
    slow path; the samples must still follow the pmf."""
    monkeypatch.setattr(dn, "_SLACK", 1.0)
    calls = []
    real = dn._LazyUniform.neg_log_exceeds
    monkeypatch.setattr(dn._LazyUniform, "neg_log_exceeds",
                        lambda self, x: calls.append(1) or real(self, x))
    kind, scale = case.split("-")
    n = 3000
    if kind == "gauss":
        x = discrete_gaussian(float(scale), n, SeededNoise(8))
        support, pmf = gauss_pmf(float(scale))
    else:
        x = discrete_laplace(float(scale), n, SeededNoise(8))
        support, pmf = laplace_pmf(float(scale))
    assert len(calls) > n
    assert chi2_pmf(x, support, pmf) > 1e-4


def test_fast_path_rarely_needs_the_slow_one(monkeypatch):
    count = []
    real = dn._LazyUniform.__init__
    monkeypatch.setattr(dn._LazyUniform, "__init__",
                        lambda self, *a: count.append(1) or real(self, *a))
    discrete_gaussian(1.1e9, 300_000, SeededNoise(2))
    discrete_laplace(4.4e12, 300_000, SeededNoise(2))
    assert len(count) <= 5  # ≈ 2^-20 per V, ≈ 5e-10 per acceptance: ~0.7 expected here


def test_numpy_exp_and_log_are_within_the_assumed_error():
    """The fast path assumes 2^-40 relative error; check 2^-45 against 40-digit decimals."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0, 1, 2000), rng.uniform(0, 700, 2000)])
    u = np.concatenate([rng.random(2000), 2.0 ** -rng.uniform(0, 1000, 2000), [1.0]])
    ctx = Context(prec=40)
    for xs, got, fn in ((x, np.exp(-x), lambda v: ctx.exp(-v)),
                        (u, np.log(u), ctx.ln)):
        for v, g in zip(xs, got, strict=True):
            want = fn(Decimal(float(v)))
            if want:
                assert abs((Decimal(float(g)) - want) / want) < Decimal(2.0**-45), v
            else:
                assert g == 0


# --- the residual bound --------------------------------------------------------------


def test_float_residual_delta_is_tiny_and_linear():
    d = float_residual_delta(GaussianMechanism(1.0, 1.0), 1_000_000, releases=100)
    assert 0 < d < 1e-12
    assert float_residual_delta("gaussian", 2_000_000, 100) == 2 * d
    assert float_residual_delta("gaussian", 1_000_000, 200) == 2 * d
    lap = float_residual_delta(LaplaceMechanism(1.0, 1.0), 1_000_000, 100)
    assert 0 < lap < d
    assert float_residual_delta("gaussian", 0, 5) == 0.0
    with pytest.raises(ValueError, match="staircase"):
        float_residual_delta(StaircaseMechanism(1.0, 1.0), 10)
    with pytest.raises(ValueError):
        float_residual_delta("gaussian", -1)


def test_acceptance_rate_bound_behind_the_residual():
    """N̄ assumes Algorithm 3 accepts ρ(σ) ≥ 0.4 of its Lap_Z(⌊σ⌋+1) proposals; sum ρ."""
    def rho(sigma):
        t = math.floor(sigma) + 1
        y, pmf = laplace_pmf(t)
        return float((pmf * np.exp(-(np.abs(y) - sigma**2 / t) ** 2 / (2 * sigma**2))).sum())

    rates = [rho(s) for s in np.concatenate([np.linspace(1 / 32, 4, 400),
                                             np.linspace(4, 60, 60)])]
    assert min(rates) >= dn.MIN_ACCEPTANCE and min(rates) == pytest.approx(0.445, abs=2e-3)


@pytest.mark.parametrize("sigma", [0.3, 1e9])
def test_proposals_per_sample_stay_within_the_documented_bound(sigma, monkeypatch):
    made = []
    real = dn._Proposals.__init__
    monkeypatch.setattr(dn._Proposals, "__init__",
                        lambda self, t, n, src: made.append(n) or real(self, t, n, src))
    discrete_gaussian(sigma, 100_000, SeededNoise(4))
    # drawn in batches sized to the observed rate, so the total is the need/ρ plus slack
    assert sum(made) / 100_000 < 5.7


# --- the grid mechanisms -------------------------------------------------------------


@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("sens,d", [(1.0, 1), (0.5, 1000), (3.0, 1_000_000), (1e-3, 7)])
def test_grid_step_is_the_largest_power_of_two_within_the_inflation(norm, sens, d):
    g = grid_step(sens, d, norm)
    assert math.frexp(g)[0] == 0.5  # a power of two
    spread = math.sqrt(d) if norm == "l2" else d
    assert g * spread <= 2.0**-20 * sens < 2 * g * spread


@pytest.mark.parametrize("mech", [GaussianMechanism(1.1, 0.7), LaplaceMechanism(0.9, 2.0)],
                         ids=["gauss", "laplace"])
def test_add_noise_lands_on_the_grid_and_is_the_rounded_input_plus_integer_noise(mech):
    rng = np.random.default_rng(0)
    v = (rng.standard_normal(50_000) * 0.3).astype(np.float32)
    before = v.copy()
    out = mech.add_noise(v, SeededNoise(21))
    np.testing.assert_array_equal(v, before)  # input untouched
    assert out.dtype == np.float32 and out.shape == v.shape
    gamma, scale = mech.grid(v.size)
    ratio = out.astype(np.float64) / gamma
    assert np.array_equal(ratio, np.floor(ratio))  # every output is a multiple of γ
    # and exactly (round(v/γ) + k)·γ for the integer noise k the same seed gives
    sampler = discrete_gaussian if mech.name == "gaussian" else discrete_laplace
    k = sampler(scale, v.size, SeededNoise(21))
    q = np.rint(v.astype(np.float64) / gamma)
    np.testing.assert_array_equal(out, ((q + k) * gamma).astype(np.float32))
    # the noise multiplier is the sensitivity after rounding
    sens = mech.sensitivity / gamma + (math.sqrt(v.size) if mech.norm == "l2" else v.size)
    assert scale == pytest.approx(mech.noise_multiplier * sens, rel=1e-14)
    assert scale >= mech.noise_multiplier * sens


def test_outputs_cannot_tell_neighbouring_inputs_by_their_low_bits():
    """Mironov's attack: with float noise, x + noise and x' + noise land on different sets
    of floats. On the grid both land on γ·Z."""
    mech = GaussianMechanism(1.0, 1.0)
    gamma, _ = mech.grid(4096)
    for value in (0.1, 0.1 + 2.0**-30, 1 / 3):
        out = mech.add_noise(np.full(4096, value, np.float32), SecureNoise())
        r = out.astype(np.float64) / gamma
        assert np.array_equal(r, np.floor(r))


@pytest.mark.parametrize("source", SOURCES)
def test_grid_noise_has_the_accounted_scale(source):
    n = 400_000
    g = GaussianMechanism(1.3, 0.5)
    x = g.sample(n, SOURCES[source]())
    gamma, _ = g.grid(n)
    assert np.array_equal(x / gamma, np.floor(x / gamma))
    # std within 5 standard errors (relative se 1/√(2n)) of z·Δ, inflation ≤ 2^-20
    assert abs(x.std() / g.std - 1) < 5 / math.sqrt(2 * n)
    lap = LaplaceMechanism(0.8, 2.0)
    x = lap.sample(n, SOURCES[source]())
    assert abs(np.abs(x).mean() / lap.scale - 1) < 5 / math.sqrt(n)
    noisy = g.add_noise(np.zeros(n, np.float32), SOURCES[source]())
    assert abs(noisy.astype(np.float64).std() / g.std - 1) < 5 / math.sqrt(2 * n)


@pytest.mark.parametrize("mech", [GaussianMechanism(1.0, 1.0), LaplaceMechanism(1.0, 1.0)],
                         ids=["gauss", "laplace"])
def test_values_off_the_representable_grid_are_refused(mech):
    d = 1000
    gamma, _ = mech.grid(d)
    ok = np.zeros(d, np.float32)
    ok[0] = np.float32(2.0**52 * gamma)  # exactly at the limit: fine
    mech.add_noise(ok, SeededNoise(0))
    for bad_value in (2.0**53 * gamma, np.inf, np.nan, -(2.0**60) * gamma):
        bad = np.zeros(d, np.float32)
        bad[7] = bad_value
        with pytest.raises(ValueError, match="grid"):
            mech.add_noise(bad, SeededNoise(0))
    with pytest.raises(ValueError, match="grid"):
        to_grid(np.array([1.0, 2.0**53]), 1.0)


def test_to_and_from_grid_round_trip_and_zero_noise_just_rounds():
    gamma = 2.0**-10
    v = np.array([0.1, -0.3, 2.0**-12, 5.0], np.float32)
    q = to_grid(v, gamma)
    assert q.dtype == np.int64 and np.all(np.abs(q * gamma - v) <= gamma / 2)
    np.testing.assert_array_equal(from_grid(q, gamma), (q * gamma).astype(np.float32))
    silent = GaussianMechanism(0.0, 1.0)
    out = silent.add_noise(v, SeededNoise(0))
    g, _ = silent.grid(v.size)
    assert np.all(np.abs(out.astype(np.float64) - v) <= g / 2)
    assert silent.add_noise(np.zeros(0, np.float32), SeededNoise(0)).shape == (0,)
    square = GaussianMechanism(1.0, 1.0).add_noise(np.zeros((30, 40), np.float32),
                                                   SeededNoise(0))
    assert square.shape == (30, 40) and square.dtype == np.float32 and square.std() > 0.9
    with pytest.raises(ValueError, match="too large"):  # σ on the grid above 2^52
        GaussianMechanism(1e7, 1.0).sample(1_000_000, SeededNoise(0))


def test_adaptive_clipping_count_noise_is_discrete_gaussian_on_the_grid():
    """With η = 1, n = 1 and no participants, C' = C·exp(−noise): recover the noise."""
    src = SeededNoise(6)
    noise = []
    for _ in range(20_000):
        clipper = AdaptiveClipper(1.0, 0.5, learning_rate=1.0, count_stddev=2.0)
        noise.append(-math.log(clipper.update(0, 0, 1.0, src)))
    noise = np.array(noise)
    assert abs(noise.std() / 2.0 - 1) < 5 / math.sqrt(2 * noise.size)
    units = noise * 2.0**20  # multiples of 2^-20, up to exp/log rounding
    assert np.max(np.abs(units - np.rint(units))) < 1e-3
