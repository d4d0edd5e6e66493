"""Privacy accounting on Google's dp-accounting: each round is one DP event.

A round of central DP-FedAvg releases the noised sum of clipped client updates over a
sampled cohort (McMahan et al., "Learning Differentially Private Recurrent Language
Models", ICLR 2018):

- Poisson sampling at rate q (each client in independently): ``PoissonSampledDpEvent``
  of a Gaussian or Laplace event, add/remove adjacency; the PLD accountant (Meiser &
  Mohammadi 2018; Koskela et al. 2020; Doroshenko et al. 2022) gives ε, and RDP
  (Mironov 2017; Zhu & Wang 2019) is reported alongside.
- Fixed-size sampling (k of N without replacement): ``SampledWithoutReplacementDpEvent``
  under replace-one adjacency (Wang, Balle & Kasiviswanathan 2019). dp-accounting's PLD
  accountant has no such event, so RDP is the accountant of record there.
- The staircase mechanism: its own PLD (:mod:`tsfl.privacy.staircase_pld`), RDP not
  available.

The noise multiplier z of an event is the noise standard deviation (Gaussian) or
scale (Laplace) over the sensitivity of the released sum.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import dp_accounting
from dp_accounting import dp_event, gaussian_mechanism
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from tsfl.privacy.mechanisms import StaircaseMechanism
from tsfl.privacy.staircase_pld import staircase_pld

SAMPLINGS = ("poisson", "fixed", "none")
# dp-accounting's RDP logs every Rényi order it drops as numerically unstable; the orders
# left decide ε, so those lines are noise to our users.
logging.getLogger("absl").setLevel(logging.ERROR)
NeighborRel = dp_accounting.NeighboringRelation


@dataclass(frozen=True)
class RoundEvent:
    """What one round releases, as the accountant needs to know it."""

    mechanism: str  # gaussian | laplace | staircase
    sampling: str = "poisson"  # poisson | fixed | none
    sampling_rate: float = 1.0
    noise_multiplier: float | None = None  # gaussian, laplace
    population: int | None = None  # fixed: N
    sample_size: int | None = None  # fixed: k
    epsilon: float | None = None  # staircase: per-coordinate ε
    dims: int = 1  # staircase: coordinates released per round

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}")
        if not 0.0 < self.sampling_rate <= 1.0:
            raise ValueError("sampling_rate must be in (0, 1]")
        if self.mechanism in ("gaussian", "laplace"):
            if not self.noise_multiplier or self.noise_multiplier <= 0:
                raise ValueError(f"{self.mechanism} needs a noise multiplier > 0")
        elif self.mechanism == "staircase":
            if not self.epsilon or self.epsilon <= 0:
                raise ValueError("staircase needs a per-coordinate epsilon > 0")
        else:
            raise ValueError(f"unknown mechanism {self.mechanism!r}")
        if self.sampling == "fixed" and not (self.population and self.sample_size):
            raise ValueError("fixed-size sampling needs population and sample_size")

    def dp_event(self) -> dp_event.DpEvent | None:
        """The dp-accounting event (None for the staircase, which has none there)."""
        if self.mechanism == "staircase":
            return None
        inner: dp_event.DpEvent = (dp_event.GaussianDpEvent(self.noise_multiplier)
                                   if self.mechanism == "gaussian"
                                   else dp_event.LaplaceDpEvent(self.noise_multiplier))
        if self.sampling == "poisson" and self.sampling_rate < 1.0:
            return dp_event.PoissonSampledDpEvent(self.sampling_rate, inner)
        if self.sampling == "fixed":
            return dp_event.SampledWithoutReplacementDpEvent(
                self.population, self.sample_size, inner)
        return inner

    @property
    def neighboring(self) -> Any:
        return NeighborRel.REPLACE_ONE if self.sampling == "fixed" else (
            NeighborRel.ADD_OR_REMOVE_ONE)

    @property
    def amplified(self) -> bool:
        """Whether subsampling amplification is applied to this event."""
        if self.sampling == "none" or (self.sampling == "poisson" and self.sampling_rate == 1):
            return False
        return not (self.mechanism == "staircase" and self.dims > 1)


@dataclass(frozen=True)
class Epsilons:
    epsilon: float  # from the accountant of record
    accountant: str  # "pld" or "rdp"
    pld: float | None
    rdp: float | None
    amplified: bool


class PrivacyAccountant:
    """Composes rounds and reports ε at a fixed δ.

    Rounds are kept as run-lengths of identical events, so ε after T rounds is one
    self-composition (FFT power for the PLD), whatever T is; results are cached.
    """

    def __init__(self, delta: float, value_discretization_interval: float = 1e-4):
        if not 0.0 < delta < 1.0:
            raise ValueError("delta must be in (0, 1)")
        self.delta = delta
        self.interval = value_discretization_interval
        self._runs: list[tuple[RoundEvent, int]] = []

    @property
    def rounds(self) -> int:
        return sum(n for _, n in self._runs)

    def _extended(self, event: RoundEvent, count: int) -> list[tuple[RoundEvent, int]]:
        runs = list(self._runs)
        if count > 0:
            if runs and runs[-1][0] == event:
                runs[-1] = (event, runs[-1][1] + count)
            else:
                runs.append((event, count))
        return runs

    def compose(self, event: RoundEvent, count: int = 1) -> None:
        self._runs = self._extended(event, count)

    def epsilons(self) -> Epsilons:
        return _epsilons(tuple(self._runs), self.delta, self.interval)

    def epsilon_after(self, event: RoundEvent, count: int = 1) -> Epsilons:
        """ε if ``count`` more rounds of ``event`` were composed (nothing is recorded)."""
        return _epsilons(tuple(self._extended(event, count)), self.delta, self.interval)


@functools.lru_cache(maxsize=4096)
def _epsilons(runs: tuple[tuple[RoundEvent, int], ...], delta: float,
              interval: float) -> Epsilons:
    if not runs:
        return Epsilons(0.0, "pld", 0.0, 0.0, True)
    amplified = all(ev.amplified for ev, _ in runs)
    rels = {ev.neighboring for ev, _ in runs}
    pld_eps = rdp_eps = None
    has_fixed = any(ev.sampling == "fixed" for ev, _ in runs)
    has_staircase = any(ev.mechanism == "staircase" for ev, _ in runs)
    events = [ev.dp_event() for ev, _ in runs]
    if all(isinstance(e, dp_event.GaussianDpEvent) for e in events):
        # Unsampled Gaussian releases compose exactly into one Gaussian with
        # σ = (Σ nᵢ/σᵢ²)^(-1/2) (Dong, Roth & Su 2019, Cor. 3.3), whose ε dp-accounting
        # gives analytically (Balle & Wang 2018): exact, where the n-fold PLD of a
        # low-noise Gaussian is a grid of millions of points.
        sigma = sum(n / e.noise_multiplier ** 2 for e, (_, n) in zip(events, runs,
                                                                       strict=True)) ** -0.5
        exact = float(gaussian_mechanism.get_epsilon_gaussian(sigma, delta))
        rdp_eps = _rdp_epsilon(runs, delta, NeighborRel.ADD_OR_REMOVE_ONE)
        return Epsilons(exact, "analytic", exact, rdp_eps, False)
    if not has_fixed:
        pld_eps = _pld_epsilon(runs, delta, interval)
    if not has_staircase and len(rels) == 1:
        rdp_eps = _rdp_epsilon(runs, delta, rels.pop())
    if pld_eps is not None:
        return Epsilons(pld_eps, "pld", pld_eps, rdp_eps, amplified)
    if rdp_eps is None:
        raise ValueError("no accountant supports this mix of rounds")
    return Epsilons(rdp_eps, "rdp", None, rdp_eps, amplified)


def _pld_epsilon(runs: tuple[tuple[RoundEvent, int], ...], delta: float,
                 interval: float) -> float:
    composed = None
    for ev, n in runs:
        pld = _round_pld(ev, interval).self_compose(n) if n > 1 else _round_pld(ev, interval)
        composed = pld if composed is None else composed.compose(pld)
    assert composed is not None
    return float(composed.get_epsilon_for_delta(delta))


@functools.lru_cache(maxsize=256)
def _round_pld(ev: RoundEvent, interval: float) -> Any:
    """One round's PLD, built once per event (building it is most of the cost)."""
    event = ev.dp_event()
    if event is None:
        return _staircase_round_pld(ev, interval)
    acc = pld_privacy_accountant.PLDAccountant(NeighborRel.ADD_OR_REMOVE_ONE, interval)
    return acc.compose(event)._pld


@functools.lru_cache(maxsize=256)
def _staircase_round_pld(ev: RoundEvent, interval: float) -> Any:
    assert ev.epsilon is not None
    mech = StaircaseMechanism(ev.epsilon, 1.0)
    rate = ev.sampling_rate if ev.amplified and ev.sampling == "poisson" else 1.0
    pld = staircase_pld(mech, rate, interval)
    return pld.self_compose(ev.dims) if ev.dims > 1 else pld


def _rdp_epsilon(runs: tuple[tuple[RoundEvent, int], ...], delta: float, rel: Any) -> float | None:
    acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=rel)
    for ev, n in runs:
        event = ev.dp_event()
        if event is None or not acc.supports(event):
            return None
        acc.compose(event, n)
    return float(acc.get_epsilon(delta))


def calibrate_noise_multiplier(target_epsilon: float, delta: float, rounds: int, *,
                               mechanism: str = "gaussian", sampling: str = "poisson",
                               sampling_rate: float = 1.0, population: int | None = None,
                               sample_size: int | None = None) -> float:
    """The smallest noise multiplier whose ε after ``rounds`` rounds is ≤ the target."""
    if target_epsilon <= 0:
        raise ValueError("target epsilon must be > 0")

    def make_event(z: float) -> dp_event.DpEvent:
        ev = RoundEvent(mechanism, sampling, sampling_rate, z, population, sample_size)
        event = ev.dp_event()
        assert event is not None
        return dp_event.SelfComposedDpEvent(event, rounds)

    probe = RoundEvent(mechanism, sampling, sampling_rate, 1.0, population, sample_size)
    rel = probe.neighboring

    def rdp() -> Any:
        return rdp_privacy_accountant.RdpAccountant(neighboring_relation=rel)

    def pld() -> Any:  # a coarser grid while searching; the answer is checked finely
        return pld_privacy_accountant.PLDAccountant(rel, 1e-3)

    def solve(fresh: Any, lo: float, hi: float) -> float:
        return float(dp_accounting.calibrate_dp_mechanism(
            fresh, make_event, target_epsilon, delta,
            dp_accounting.ExplicitBracketInterval(lo, hi), tol=1e-3))

    rdp_ok = rdp().supports(make_event(1.0))
    if sampling == "fixed":  # the PLD accountant has no fixed-size sampling event
        return solve(rdp, 1e-3, 1e4)
    if not rdp_ok:  # e.g. Poisson-sampled Laplace: PLD only (its losses are bounded)
        return _verified(solve(pld, 1e-2, 1e4), make_event, rel, target_epsilon, delta)
    # RDP is cheap at any z and looser than PLD, so its answer bounds the PLD's from
    # above; the PLD search then stays where its grids are small.
    upper = solve(rdp, 1e-3, 1e4)
    lower = max(upper / 4, 0.25)
    if lower >= upper:
        return upper
    try:
        z = solve(pld, lower, upper)
    except ValueError:  # no sign change: the PLD needs less than ``lower``
        z = lower
    return _verified(z, make_event, rel, target_epsilon, delta)


def _verified(z: float, make_event: Any, rel: Any, target: float, delta: float) -> float:
    """Nudge ``z`` up until the fine-grid PLD accountant agrees it meets the target."""
    for _ in range(50):
        acc = pld_privacy_accountant.PLDAccountant(rel)
        if acc.compose(make_event(z)).get_epsilon(delta) <= target:
            return z
        z *= 1.002
    return z
