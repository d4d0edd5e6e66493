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

import collections
import functools
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

import dp_accounting
import numpy as np
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
    gaussians = [e for e in events if isinstance(e, dp_event.GaussianDpEvent)]
    if len(gaussians) == len(events):
        # Unsampled Gaussian releases compose exactly into one Gaussian with
        # σ = (Σ nᵢ/σᵢ²)^(-1/2) (Dong, Roth & Su 2019, Cor. 3.3), whose ε dp-accounting
        # gives analytically (Balle & Wang 2018): exact, where the n-fold PLD of a
        # low-noise Gaussian is a grid of millions of points.
        sigma = sum(n / e.noise_multiplier ** 2 for e, (_, n) in zip(gaussians, runs,
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
    return pld_epsilon_for_delta(_composed_pld(runs, interval), delta)


def pld_epsilon_for_delta(pld: Any, delta: float) -> float:
    """``pld.get_epsilon_for_delta(delta)``, vectorised.

    dp-accounting scans the loss grid from the top in a Python loop (most of a round's
    accounting time); this is the same scan as cumulative sums. The smallest ε with
    δ(ε) = μ_∞ + Σ_{l>ε} p_l (1 − e^{ε−l}) ≤ δ (Sommer, Meiser & Mohammadi 2019, Thm. 1)
    solves ε = ln((U − δ)/L) on the segment where it lands, U = μ_∞ + Σ p_l and
    L = Σ e^{−l} p_l over the losses above it. Falls back to dp-accounting where e^{−l}
    underflows or the PMF is not dense.
    """
    pmfs = [pld._pmf_remove] if pld._symmetric else [pld._pmf_remove, pld._pmf_add]
    return max(_dense_epsilon_for_delta(pmf, delta) for pmf in pmfs)


def _dense_epsilon_for_delta(pmf: Any, delta: float) -> float:
    dense = pmf.to_dense_pmf()
    probs = np.asarray(getattr(dense, "_probs", ()), dtype=np.float64)[::-1]
    inf_mass = float(dense._infinity_mass)
    if inf_mass > delta:
        return math.inf
    if probs.size == 0:
        return float(pmf.get_epsilon_for_delta(delta))
    top = dense._lower_loss + probs.size - 1
    losses = (top - np.arange(probs.size)) * dense._discretization
    weights = np.exp(-losses)
    if losses[0] > 700 or not np.all(np.isfinite(weights)):
        return float(pmf.get_epsilon_for_delta(delta))
    # U, L before each step of the scan (exclusive prefix sums)
    upper = inf_mass + np.concatenate(([0.0], np.cumsum(probs)[:-1]))
    lower = np.concatenate(([0.0], np.cumsum(weights * probs)[:-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        ready = (upper > delta) & (lower > 0)
        stop = ready & (np.log(np.where(ready, (upper - delta) / np.where(lower > 0, lower, 1),
                                        1.0)) >= losses)
    hit = np.flatnonzero(stop)
    if hit.size:
        u, lo = upper[hit[0]], lower[hit[0]]
    else:
        u, lo = inf_mass + probs.sum(), float(np.dot(weights, probs))
    if u <= lo + delta:
        return 0.0
    return float(math.log((u - delta) / lo))


_Runs = tuple[tuple[RoundEvent, int], ...]
#: composed PLDs of recent run sequences (a ledger's last few rounds), newest last
_COMPOSED: collections.OrderedDict[tuple[_Runs, float], Any] = collections.OrderedDict()
_COMPOSED_SIZE = 6
_COMPOSED_LOCK = threading.Lock()


def _composed_pld(runs: _Runs, interval: float) -> Any:
    """The PLD of ``runs`` composed in order.

    A ledger grows one round at a time, so the PLD after T+1 rounds is the cached PLD
    after T composed once with the round's PLD (one convolution, ~8× cheaper than the
    T+1-fold self-composition, and equal to it within 1e-10); anything else is composed
    from scratch (one FFT power per run).
    """
    with _COMPOSED_LOCK:
        hit = _COMPOSED.get((runs, interval))
        if hit is not None:
            _COMPOSED.move_to_end((runs, interval))
            return hit
        ev, n = runs[-1]
        before = runs[:-1] + (((ev, n - 1),) if n > 1 else ())
        previous = _COMPOSED.get((before, interval)) if before else None
    base = _round_pld(ev, interval)
    if previous is not None:
        composed = previous.compose(base)
    elif not before:
        composed = base
    else:
        composed = None
        for event, count in runs:
            pld = _round_pld(event, interval)
            pld = pld.self_compose(count) if count > 1 else pld
            composed = pld if composed is None else composed.compose(pld)
    with _COMPOSED_LOCK:
        _COMPOSED[(runs, interval)] = composed
        while len(_COMPOSED) > _COMPOSED_SIZE:
            _COMPOSED.popitem(last=False)
    return composed


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


def _rdp_epsilon(runs: _Runs, delta: float, rel: Any) -> float | None:
    """RDP composes additively (Mironov 2017, Prop. 1): Σ countᵢ · RDP(eventᵢ) over the
    accountant's orders, each event's curve computed once."""
    curves = [_round_rdp(ev, rel) for ev, _ in runs]
    if any(c is None for c in curves):
        return None
    orders, _ = curves[0]  # type: ignore[misc]
    total = sum(n * c[1] for (_, n), c in zip(runs, curves, strict=True))  # type: ignore[index]
    return float(rdp_privacy_accountant.compute_epsilon(orders, total, delta)[0])


@functools.lru_cache(maxsize=256)
def _round_rdp(ev: RoundEvent, rel: Any) -> tuple[Any, Any] | None:
    """One round's RDP curve (orders, ε(α)) from dp-accounting, or None if unsupported."""
    event = ev.dp_event()
    acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=rel)
    if event is None or not acc.supports(event):
        return None
    acc.compose(event)
    return acc._orders, acc._rdp.copy()


def calibrate_noise_multiplier(target_epsilon: float, delta: float, rounds: int, *,
                               mechanism: str = "gaussian", sampling: str = "poisson",
                               sampling_rate: float = 1.0, population: int | None = None,
                               sample_size: int | None = None,
                               interval: float = 1e-4) -> float:
    """The smallest noise multiplier whose ε after ``rounds`` rounds is ≤ the target, as
    the PLD accountant at discretization ``interval`` reports it."""
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
        return _verified(solve(pld, 1e-2, 1e4), make_event, rel, target_epsilon, delta,
                         interval)
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
    return _verified(z, make_event, rel, target_epsilon, delta, interval)


def _verified(z: float, make_event: Any, rel: Any, target: float, delta: float,
              interval: float) -> float:
    """Nudge ``z`` up until the PLD accountant of record agrees it meets the target."""
    for _ in range(50):
        acc = pld_privacy_accountant.PLDAccountant(rel, interval)
        if acc.compose(make_event(z)).get_epsilon(delta) <= target:
            return z
        z *= 1.002
    return z
