"""A job's DP plan: what each round clips, noises and charges, derived from its spec.

The same plan drives the privacy role (central DP), the device SDK (local DP) and the
report; :func:`resolve_privacy` runs once at submission (calibrating the noise and
refusing budgets that cannot be met) and writes the result into the stored spec, so
every service reads the same numbers.

Sensitivities of one round's released sum of clipped updates, per adjacency:
- central, Poisson sampling (add/remove one client): C;
- central, fixed-size sampling (replace one client): 2C;
- local (any two inputs of one device): 2C, the diameter of the clipping ball.
The noised sum is divided by the *expected* cohort size (fixed denominator; McMahan et
al. 2018, §3), so a dropout changes the signal, never the privacy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tsfl.config import ConfigError, JobSpec, PrivacySpec
from tsfl.privacy.accounting import PrivacyAccountant, RoundEvent, calibrate_noise_multiplier
from tsfl.privacy.clipping import AdaptiveClipper
from tsfl.privacy.mechanisms import Mechanism, build_mechanism

BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"


@dataclass(frozen=True)
class DpPlan:
    mode: str  # central | local
    mechanism: str
    norm: str  # the norm clipping uses
    clip_norm: float  # the initial clip norm
    noise_multiplier: float | None  # total z (accounted); None for the staircase
    event: RoundEvent  # what one round costs (central), or one device-round (local)
    sensitivity_factor: float  # sensitivity = factor × clip norm
    expected_clients: float
    population: int
    delta: float
    target_epsilon: float | None
    noise: str
    adaptive: AdaptiveClipper | None
    accounting_interval: float = 1e-4

    def accountant(self) -> PrivacyAccountant:
        """A fresh accountant at this plan's δ and discretization."""
        return PrivacyAccountant(self.delta, self.accounting_interval)

    @property
    def sampling(self) -> str:
        return self.event.sampling

    @property
    def sampling_rate(self) -> float:
        return self.event.sampling_rate

    @property
    def count_sensitivity(self) -> float:
        """How far one client moves adaptive clipping's centred count Σ(1[‖Δ‖≤C] − ½):
        ½ when a client is added or removed, 1 when one replaces another (fixed-size
        sampling: a −½ becomes a +½)."""
        return 1.0 if self.sampling == "fixed" else 0.5

    def update_noise_multiplier(self) -> float | None:
        """z for the update sum (less than the total when adaptive clipping takes a share)."""
        if self.noise_multiplier is None or self.adaptive is None:
            return self.noise_multiplier
        return split_noise_multiplier(self.noise_multiplier, self.adaptive.count_stddev,
                                      self.count_sensitivity)

    def event_for_population(self, population: int | None) -> RoundEvent:
        """The round's event when its cohort was drawn from ``population`` registered
        devices (None: as planned). Fixed-size sampling draws k of the devices actually
        there, so fewer devices mean a higher rate; Poisson sampling includes each device
        at the planned rate whatever their number (a smaller population only shrinks the
        cohort)."""
        ev = self.event
        if population is None or ev.sampling != "fixed" or population == ev.population:
            return ev
        if population < 1:
            raise ValueError("a cohort needs a population of at least one device")
        k = min(ev.sample_size or 1, population)
        return RoundEvent(ev.mechanism, "fixed", k / population, ev.noise_multiplier,
                          population=population, sample_size=k)

    def mechanism_for(self, clip_norm: float) -> Mechanism:
        return build_mechanism(self.mechanism, noise_multiplier=self.update_noise_multiplier(),
                               sensitivity=self.sensitivity_factor * clip_norm,
                               epsilon=self.event.epsilon)

    def new_clipper(self) -> AdaptiveClipper | None:
        if self.adaptive is None:
            return None
        a = self.adaptive
        return AdaptiveClipper(self.clip_norm, a.target_quantile, a.learning_rate,
                               a.count_stddev)


def split_noise_multiplier(total: float, count_stddev: float,
                           count_sensitivity: float) -> float:
    """z_Δ of the update sum when the clipped count (noise σ_b, sensitivity s) takes its
    share of the round's total multiplier z (Andrew et al. 2021, Theorem 1): the two
    Gaussian releases compose as one of multiplier (z_Δ⁻² + (σ_b/s)⁻²)^(−1/2) = z, so
    z_Δ = (z⁻² − (σ_b/s)⁻²)^(−1/2). Add/remove adjacency has s = ½ (the paper's
    (2σ_b)⁻²); replace-one has s = 1."""
    count_multiplier = count_stddev / count_sensitivity
    if count_multiplier <= total:
        raise ValueError(f"clipped-count stddev {count_stddev} must exceed "
                         f"{count_sensitivity:g} × the noise multiplier "
                         f"({count_sensitivity * total:g}) to leave budget for the updates")
    return (total ** -2 - count_multiplier ** -2) ** -0.5


def _norm(mechanism: str) -> str:
    return {"gaussian": "l2", "laplace": "l1", "staircase": "linf"}[mechanism]


def build_plan(spec: JobSpec, model_size: int, noise_multiplier: float | None = None
               ) -> DpPlan | None:
    """The plan of ``spec`` (None without DP). ``noise_multiplier`` overrides the spec's."""
    p = spec.privacy
    if p.mode == "none":
        return None
    assert p.clip_norm is not None
    n, k = spec.clients.count, spec.clients.per_round
    z = noise_multiplier if noise_multiplier is not None else p.noise_multiplier
    if p.mode == "local":
        event = RoundEvent(p.mechanism, "none", 1.0, z if p.mechanism != "staircase" else None,
                           epsilon=p.epsilon_per_round,
                           dims=model_size if p.mechanism == "staircase" else 1)
        factor = 2.0
    elif p.sampling == "poisson":
        event = RoundEvent(p.mechanism, "poisson", k / n, z if p.mechanism != "staircase"
                           else None, epsilon=p.epsilon_per_round,
                           dims=model_size if p.mechanism == "staircase" else 1)
        factor = 1.0
    else:
        event = RoundEvent(p.mechanism, "fixed", k / n, z, population=n, sample_size=k)
        factor = 2.0
    adaptive = None
    if p.adaptive_clipping is not None:
        a = p.adaptive_clipping
        # σ_b defaults to the paper's expected-cohort/20, raised where the noise multiplier
        # would otherwise leave the update sum no budget (σ_b must exceed z·s, with the
        # count's sensitivity s = ½ under add/remove and 1 under replace-one).
        s = 1.0 if event.sampling == "fixed" else 0.5
        default_sb = max(k / 20, 2 * s * (z or 0.0))
        adaptive = AdaptiveClipper(p.clip_norm, a.target_quantile, a.learning_rate,
                                   a.count_stddev or default_sb)
    return DpPlan(p.mode, p.mechanism, _norm(p.mechanism), p.clip_norm,
                  z if p.mechanism != "staircase" else None, event, factor, float(k), n,
                  p.delta, p.target_epsilon, p.noise, adaptive, p.accounting_interval)


@functools.lru_cache(maxsize=64)
def _calibrate(target: float, delta: float, rounds: int, mechanism: str, sampling: str,
               rate: float, population: int | None, sample: int | None,
               interval: float) -> float:
    return calibrate_noise_multiplier(target, delta, rounds, mechanism=mechanism,
                                      sampling=sampling, sampling_rate=rate,
                                      population=population, sample_size=sample,
                                      interval=interval)


def resolve_privacy(spec: JobSpec, model_size: int) -> JobSpec:
    """Calibrate the noise multiplier where the spec leaves it to the budget, and refuse
    a budget that not even one round fits. Returns the spec to store."""
    plan = build_plan(spec, model_size, noise_multiplier=spec.privacy.noise_multiplier or 1.0)
    if plan is None:
        return spec
    p = spec.privacy
    problems: list[str] = []
    if p.noise_multiplier is None and p.mechanism != "staircase":
        assert p.target_epsilon is not None
        ev = plan.event
        try:
            z = _calibrate(p.target_epsilon, p.delta, spec.rounds, ev.mechanism, ev.sampling,
                           ev.sampling_rate, ev.population, ev.sample_size,
                           p.accounting_interval)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError([f"privacy.target_epsilon: cannot calibrate the noise for "
                               f"{spec.rounds} rounds: {exc}"]) from None
        spec = spec.model_copy(update={"privacy": PrivacySpec.model_validate(
            {**p.model_dump(), "noise_multiplier": z})})
        plan = build_plan(spec, model_size)
        assert plan is not None
    if (plan.adaptive is not None and plan.noise_multiplier is not None
            and plan.adaptive.count_stddev <= plan.noise_multiplier * plan.count_sensitivity):
        bound = plan.noise_multiplier * plan.count_sensitivity
        problems.append(f"privacy.adaptive_clipping.count_stddev "
                        f"({plan.adaptive.count_stddev:g}) must exceed "
                        f"{plan.count_sensitivity:g} × the noise multiplier ({bound:g}) "
                        f"under {plan.sampling} sampling")
    if p.target_epsilon is not None and not problems:
        acc = plan.accountant()
        first = acc.epsilon_after(plan.event, 1).epsilon
        if first > p.target_epsilon:
            problems.append(f"privacy.target_epsilon: unreachable budget: one round already "
                            f"spends ε={first:.3g} > {p.target_epsilon:g} at δ={p.delta:g}")
    if problems:
        raise ConfigError(problems)
    return spec
