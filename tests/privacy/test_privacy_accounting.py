"""The accountant against dp-accounting, the staircase PLD against Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event, gaussian_mechanism
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from tsfl.privacy import PrivacyAccountant, RoundEvent, StaircaseMechanism
from tsfl.privacy.accounting import calibrate_noise_multiplier
from tsfl.privacy.staircase_pld import staircase_pld, staircase_privacy_loss_samples

DELTA = 1e-5


def _reference(q: float, sigma: float, rounds: int) -> tuple[float, float]:
    """ε straight from dp-accounting: the events a DP-FedAvg round is."""
    event = dp_event.GaussianDpEvent(sigma)
    if q < 1:
        event = dp_event.PoissonSampledDpEvent(q, event)
    if q == 1:  # the composed Gaussian's exact ε (dp-accounting's analytic Gaussian)
        pld = gaussian_mechanism.get_epsilon_gaussian(sigma / math.sqrt(rounds), DELTA)
    else:
        pld = pld_privacy_accountant.PLDAccountant().compose(event, rounds).get_epsilon(DELTA)
    rdp = rdp_privacy_accountant.RdpAccountant().compose(event, rounds).get_epsilon(DELTA)
    return pld, rdp


@pytest.mark.parametrize("q", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("rounds", [1, 10, 100, 1000])
def test_reported_epsilon_equals_dp_accounting_on_the_grid(q, sigma, rounds):
    acc = PrivacyAccountant(DELTA)
    event = RoundEvent("gaussian", "poisson", q, sigma)
    for _ in range(min(rounds, 3)):  # round by round, as the ledger charges...
        acc.compose(event)
    acc.compose(event, rounds - min(rounds, 3))  # ...and the rest at once
    eps = acc.epsilons()
    pld, rdp = _reference(q, sigma, rounds)
    assert eps.amplified == (q < 1)
    assert eps.epsilon == pytest.approx(pld, rel=1e-6)
    assert eps.accountant == ("analytic" if q == 1 else "pld")
    assert eps.rdp == pytest.approx(rdp, rel=1e-6)
    assert eps.pld <= eps.rdp * (1 + 1e-6)  # the PLD is the tighter bound


@pytest.mark.parametrize("q,sigma,rounds", [(0.01, 1.0, 1000), (0.1, 1.0866, 60),
                                            (0.02, 0.8, 100), (0.1, 3.0, 1)])
def test_the_jobs_coarser_grid_is_dp_accounting_at_that_grid_and_close_to_its_default(
        q, sigma, rounds):
    """Jobs account at a 1e-3 loss grid (``privacy.accounting_interval``): exactly
    dp-accounting's ε at that grid, and an upper bound within 0.1% of its 1e-4 default."""
    acc = PrivacyAccountant(DELTA, 1e-3)
    event = RoundEvent("gaussian", "poisson", q, sigma)
    for _ in range(min(rounds, 3)):
        acc.compose(event)
    acc.compose(event, rounds - min(rounds, 3))
    reference = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
    coarse = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3).compose(
        reference, rounds).get_epsilon(DELTA)
    fine, _ = _reference(q, sigma, rounds)
    assert acc.epsilons().epsilon == pytest.approx(coarse, rel=1e-6)
    assert fine * (1 - 1e-6) <= acc.epsilons().epsilon <= fine * 1.001 + 1e-4


@pytest.mark.parametrize("sigma,rounds", [(0.5, 3), (1.0, 10), (2.0, 30)])
def test_analytic_gaussian_composition_agrees_with_the_pld_accountant(sigma, rounds):
    acc = PrivacyAccountant(DELTA)
    acc.compose(RoundEvent("gaussian", "none", 1.0, sigma), rounds)
    pld = pld_privacy_accountant.PLDAccountant().compose(
        dp_event.GaussianDpEvent(sigma), rounds).get_epsilon(DELTA)
    assert acc.epsilons().epsilon == pytest.approx(pld, rel=2e-3)
    assert acc.epsilons().epsilon <= pld  # the PLD's grid rounds pessimistically


def test_the_issue_reference_numbers():
    eps = PrivacyAccountant(DELTA)
    eps.compose(RoundEvent("gaussian", "poisson", 0.01, 1.0), 1000)
    e = eps.epsilons()
    assert e.pld == pytest.approx(1.83, abs=0.01) and e.rdp == pytest.approx(2.10, abs=0.01)


def test_fixed_size_sampling_is_accounted_by_rdp_replace_one():
    acc = PrivacyAccountant(DELTA)
    acc.compose(RoundEvent("gaussian", "fixed", 0.01, 1.0, population=1000, sample_size=10), 50)
    e = acc.epsilons()
    ref = rdp_privacy_accountant.RdpAccountant(
        neighboring_relation=rdp_privacy_accountant.NeighborRel.REPLACE_ONE).compose(
        dp_event.SampledWithoutReplacementDpEvent(1000, 10, dp_event.GaussianDpEvent(1.0)),
        50).get_epsilon(DELTA)
    assert e.accountant == "rdp" and e.pld is None and e.epsilon == pytest.approx(ref)


def test_laplace_rounds_match_dp_accounting():
    acc = PrivacyAccountant(DELTA)
    acc.compose(RoundEvent("laplace", "poisson", 0.1, 2.0), 20)
    ref = pld_privacy_accountant.PLDAccountant().compose(
        dp_event.PoissonSampledDpEvent(0.1, dp_event.LaplaceDpEvent(2.0)), 20).get_epsilon(DELTA)
    assert acc.epsilons().epsilon == pytest.approx(ref)
    # never above basic composition of the pure ε = 1/z of each round
    assert acc.epsilons().epsilon <= 20 * 0.5


@pytest.mark.parametrize("target,rounds,q", [(1.0, 100, 0.01), (4.0, 50, 0.1), (8.0, 200, 0.02)])
def test_calibrated_noise_meets_the_target_tightly(target, rounds, q):
    z = calibrate_noise_multiplier(target, DELTA, rounds, sampling_rate=q)
    pld, _ = _reference(q, z, rounds)
    assert pld <= target and pld >= target * 0.98
    with pytest.raises(ValueError):
        calibrate_noise_multiplier(0.0, DELTA, rounds)


def test_calibration_at_the_jobs_grid_meets_the_target_on_that_grid():
    z = calibrate_noise_multiplier(8.0, DELTA, 60, sampling_rate=0.1, interval=1e-3)
    acc = PrivacyAccountant(DELTA, 1e-3)
    acc.compose(RoundEvent("gaussian", "poisson", 0.1, z), 60)
    assert 8.0 * 0.98 <= acc.epsilons().epsilon <= 8.0


# -- the staircase ------------------------------------------------------------------------
@pytest.mark.parametrize("eps0", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("rounds", [1, 5, 20])
def test_staircase_composition_never_exceeds_basic_composition(eps0, rounds):
    acc = PrivacyAccountant(DELTA)
    acc.compose(RoundEvent("staircase", "none", epsilon=eps0), rounds)
    e = acc.epsilons()
    assert e.epsilon <= rounds * (eps0 + 1e-4)  # + the PLD grid's pessimistic rounding
    assert e.rdp is None and e.accountant == "pld"
    if rounds == 1:  # one pure-ε release: the PLD gives ε back (up to its grid)
        assert e.epsilon == pytest.approx(eps0, abs=2e-3)


@pytest.mark.parametrize("eps0,rounds", [(0.5, 10), (1.0, 4), (0.2, 50)])
def test_staircase_pld_matches_a_monte_carlo_estimate_of_its_privacy_loss(eps0, rounds):
    """δ(ε) = E[(1 − e^{ε − L})₊] over the composed loss L, sampled from the mechanism."""
    mech = StaircaseMechanism(eps0, 1.0)
    pld = staircase_pld(mech).self_compose(rounds)
    rng = np.random.default_rng(11)
    loss = sum(staircase_privacy_loss_samples(mech, 400_000, rng) for _ in range(rounds))
    for eps in (0.25 * rounds * eps0, 0.5 * rounds * eps0):
        mc = float(np.mean(np.clip(1 - np.exp(eps - loss), 0, None)))
        se = float(np.std(np.clip(1 - np.exp(eps - loss), 0, None))) / math.sqrt(loss.size)
        exact = pld.get_delta_for_epsilon(eps)
        assert abs(exact - mc) <= 5 * se + 2e-3 * max(exact, 1e-3), (eps, exact, mc)


def test_staircase_subsampling_is_amplified_for_one_coordinate_only():
    one = PrivacyAccountant(DELTA)
    one.compose(RoundEvent("staircase", "poisson", 0.1, epsilon=1.0), 10)
    full = PrivacyAccountant(DELTA)
    full.compose(RoundEvent("staircase", "none", epsilon=1.0), 10)
    assert one.epsilons().amplified and one.epsilons().epsilon < full.epsilons().epsilon
    many = PrivacyAccountant(DELTA)
    many.compose(RoundEvent("staircase", "poisson", 0.1, epsilon=0.1, dims=8), 3)
    flat = PrivacyAccountant(DELTA)
    flat.compose(RoundEvent("staircase", "none", epsilon=0.1, dims=8), 3)
    # a vector release shares one sampling decision: no amplification is claimed
    assert not many.epsilons().amplified
    assert many.epsilons().epsilon == pytest.approx(flat.epsilons().epsilon)


def test_subsampled_staircase_pld_against_monte_carlo():
    """The mixture pair ((1−q)μ₀ + qμ_Δ, μ₀): its remove-side δ(ε) against sampling it."""
    mech, q = StaircaseMechanism(2.0, 1.0), 0.3
    pld = staircase_pld(mech, q)
    rng = np.random.default_rng(5)
    n = 1_000_000
    from tsfl.privacy.noise import SeededNoise

    x = mech.sample(n, SeededNoise(9)) + np.where(rng.random(n) < q, 1.0, 0.0)
    upper = (1 - q) * mech.pdf(x) + q * mech.pdf(x - 1.0)
    loss = np.log(upper) - np.log(mech.pdf(x))
    for eps in (0.2, 0.5):
        mc = float(np.mean(np.clip(1 - np.exp(eps - loss), 0, None)))
        assert pld.get_delta_for_epsilon(eps) == pytest.approx(mc, abs=3e-3)


@pytest.mark.parametrize("q,sigma,rounds,interval", [
    (0.01, 1.0, 1000, 1e-4), (0.1, 1.0866, 60, 1e-3), (0.02, 0.8, 100, 1e-4),
    (0.1, 3.0, 1, 1e-3), (0.5, 0.3, 5, 1e-4)])
def test_vectorised_epsilon_for_delta_equals_dp_accountings_scan(q, sigma, rounds, interval):
    from tsfl.privacy.accounting import pld_epsilon_for_delta

    event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)\
        .compose(event, rounds)._pld
    for delta in (1e-7, 1e-5, 1e-3, 0.3):
        assert pld_epsilon_for_delta(pld, delta) == pytest.approx(
            pld.get_epsilon_for_delta(delta), rel=1e-9, abs=1e-12)


def test_vectorised_epsilon_for_delta_on_laplace_and_staircase_plds():
    from tsfl.privacy.accounting import _round_pld, pld_epsilon_for_delta

    laplace = pld_privacy_accountant.PLDAccountant().compose(
        dp_event.PoissonSampledDpEvent(0.1, dp_event.LaplaceDpEvent(1.0)), 20)._pld
    stair = _round_pld(RoundEvent("staircase", "poisson", 0.1, epsilon=1.0), 1e-4)
    for pld in (laplace, stair.self_compose(10)):
        assert pld_epsilon_for_delta(pld, DELTA) == pytest.approx(
            pld.get_epsilon_for_delta(DELTA), rel=1e-9)
