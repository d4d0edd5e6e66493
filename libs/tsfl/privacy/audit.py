"""Empirical privacy lower bounds from one run (statistics only: no I/O, no pipeline).

One-run auditing (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training
Run", NeurIPS 2023; arXiv 2305.08846): m canaries are each included independently with
probability 1/2 (the secret S ∈ {−1, +1}^m), the mechanism runs once, and an auditor who
sees only its output guesses T ∈ {−1, 0, +1}^m — "in" (+1) for the k₊ highest membership
scores, "out" (−1) for the k₋ lowest, abstaining (0) on the rest, so r = k₊ + k₋ guesses.
W = Σᵢ max(0, Tᵢ·Sᵢ) counts the correct ones.

This is the game of their Algorithm 1. If the mechanism is (ε, δ)-DP with respect to
each canary's inclusion, their Theorem 3 (the approximate-DP result) bounds, for every v,

    P[W ≥ v] ≤ f(v) + 2·m·δ · max_{i ∈ {1..m}} (f(v − i) − f(v)) / i,
    f(v) = P[W' ≥ v],  W' ~ Binomial(r, e^ε / (1 + e^ε)),

i.e. no ε-DP auditor guesses better than ε-randomized response, up to the δ term (at
δ = 0 the bound is the binomial tail alone). :func:`p_value` is this right-hand side at
the observed v (the p-value of the null hypothesis "the mechanism is (ε, δ)-DP");
:func:`epsilon_lower_bound` is the empirical ε the paper reports: the ε below which that
hypothesis is rejected at level β (their search for the largest ε with p-value ≤ β).
``1 − β`` is the confidence (95% for β = 0.05).

:func:`audit` applies this to scores. Taking the best bound over several (k₊, k₋), or
over several score statistics, would be a search over tests; it is corrected here by
Bonferroni: each of the J tests, fixed before looking at the scores, is run at level β/J,
so the best of them still holds with confidence 1 − β.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import special

#: the default level: 95% confidence
BETA = 0.05


def rr_accuracy(epsilon: float) -> float:
    """e^ε / (1 + e^ε): how often ε-DP randomized response tells the truth."""
    return 1.0 / (1.0 + math.exp(-epsilon))


def _check(m: int, r: int, v: int) -> None:
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 ≤ correct ({v}) ≤ guesses ({r}) ≤ canaries ({m})")


def p_value(m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """Steinke et al. 2023, Theorem 3: an upper bound on P[W ≥ v] — at least ``v`` of ``r``
    guesses about ``m`` canaries correct — for any (ε, δ)-DP mechanism and any auditor.

    f(v) = P[Binomial(r, e^ε/(1+e^ε)) ≥ v]; the δ term is 2mδ · max_i (f(v−i) − f(v))/i,
    whose maximum is attained at some i ≤ v (for i ≥ v the numerator is 1 − f(v)).
    Capped at 1."""
    _check(m, r, v)
    if epsilon < 0 or not 0.0 <= delta <= 1.0:
        raise ValueError("need ε ≥ 0 and 0 ≤ δ ≤ 1")
    if v == 0:
        return 1.0
    q = rr_accuracy(epsilon)
    tail = float(special.bdtrc(v - 1, r, q))  # f(v) = P[W' ≥ v]
    if delta == 0.0:
        return min(1.0, tail)
    # f(v − i) − f(v) = P[v − i ≤ W' ≤ v − 1], i = 1..v: a running sum of the pmf
    k = np.arange(v - 1, -1, -1, dtype=np.float64)
    with np.errstate(divide="ignore"):  # q = 1.0 (ε ≳ 37): log(1 − q) = −inf, pmf 0
        log_pmf = (special.gammaln(r + 1) - special.gammaln(k + 1) - special.gammaln(r - k + 1)
                   + k * math.log(q) + (r - k) * np.log1p(-q))
    window = np.cumsum(np.exp(log_pmf))
    alpha = float(np.max(window / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float = 0.0, beta: float = BETA,
                        *, tol: float = 1e-6) -> float:
    """The empirical ε: inf{ε ≥ 0 : p_value(m, r, v, ε, δ) > β}, the ε below which every
    (ε, δ)-DP hypothesis is rejected at level β by Theorem 3 (0 when even ε = 0 is not).

    For δ = 0 the p-value increases with ε (a binomial tail in its success probability),
    so this is the largest ε with p ≤ β — the paper's bisection. With δ > 0 the δ term
    need not be monotone: the first crossing is bracketed on a grid of step 0.25 and then
    bisected, so a later dip below β is never reported (conservative)."""
    _check(m, r, v)
    if not 0.0 < beta < 1.0:
        raise ValueError("β must be in (0, 1)")

    def rejected(eps: float) -> bool:
        return p_value(m, r, v, eps, delta) <= beta

    if not rejected(0.0):
        return 0.0
    lo, step = 0.0, 0.25
    hi = lo + step
    while rejected(hi):
        lo, hi = hi, hi + step
        if hi > 1e3:  # cannot happen for finite r: p → P[W' ≥ v] > 0 … → 1 as ε grows
            return lo
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo


def count_correct(scores: np.ndarray, included: np.ndarray, k_pos: int, k_neg: int
                  ) -> tuple[int, int]:
    """(r, v): guess "in" for the ``k_pos`` highest scores and "out" for the ``k_neg``
    lowest; ties are ordered by canary index (independent of inclusion, so still a valid
    auditor). Returns the number of guesses and of correct ones."""
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    m = scores.shape[0]
    if included.shape != scores.shape:
        raise ValueError("scores and included must have the same length")
    if k_pos < 0 or k_neg < 0 or k_pos + k_neg > m:
        raise ValueError(f"k₊ = {k_pos}, k₋ = {k_neg}: need k₊ + k₋ ≤ m = {m}")
    order = np.argsort(scores, kind="stable")  # ascending
    out_guess = order[:k_neg]
    in_guess = order[m - k_pos:] if k_pos else order[:0]
    v = int(included[in_guess].sum()) + int((~included[out_guess]).sum())
    return k_pos + k_neg, v


def default_choices(m: int) -> list[tuple[int, int]]:
    """The (k₊, k₋) tried by :func:`audit`, fixed from m alone (never from the scores):
    k ∈ {1, 2, 5, 10, 20, 50}% of m (at least one guess), each one-sided (guess "in"
    only: an included canary the sampler never picked scores like an excluded one, so
    the low end is noisier) and two-sided (k₊ = k₋ = k); 12 choices at most."""
    out: list[tuple[int, int]] = []
    for frac in (0.01, 0.02, 0.05, 0.10, 0.20, 0.50):
        k = max(1, round(frac * m))
        for choice in ((k, 0), (k, k)):
            if sum(choice) <= m and choice not in out:
                out.append(choice)
    return out


@dataclass(frozen=True)
class Candidate:
    statistic: str  # which score vector
    k_pos: int
    k_neg: int
    guesses: int  # r
    correct: int  # v
    epsilon: float  # the bound at level β / J


@dataclass(frozen=True)
class AuditResult:
    """One audit: the bound, the test it came from, and every test tried."""

    epsilon: float  # the empirical lower bound, confidence 1 − β (all tests together)
    delta: float
    beta: float
    canaries: int  # m
    included: int
    statistic: str  # the score the bound came from
    k_pos: int
    k_neg: int
    guesses: int
    correct: int
    threshold_in: float | None  # lowest score guessed "in" (None: no "in" guess)
    threshold_out: float | None  # highest score guessed "out"
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def confidence(self) -> float:
        return 1.0 - self.beta

    @property
    def tests(self) -> int:
        """J: the (statistic, k₊, k₋) tests the bound is the best of."""
        return len(self.candidates)


Scores = Sequence[float] | np.ndarray


def audit(scores: Scores | Mapping[str, Scores], included: Sequence[bool] | np.ndarray,
          delta: float = 0.0, beta: float = BETA,
          choices: Sequence[tuple[int, int]] | None = None) -> AuditResult:
    """The empirical ε lower bound of one run from per-canary membership scores (higher
    means "more likely included") and the true inclusion bits.

    ``scores`` is one score vector, or several by name (statistics fixed in advance, each
    a function of what the adversary sees). Every (statistic, k₊, k₋) — ``choices``
    defaults to :func:`default_choices` — is bounded by :func:`epsilon_lower_bound` at
    level β/J (Bonferroni over the J tests); the largest bound is reported and holds
    with confidence 1 − β."""
    named = dict(scores) if isinstance(scores, Mapping) else {"score": scores}
    if not named:
        raise ValueError("no scores")
    inc = np.asarray(included, dtype=bool)
    m = inc.shape[0]
    if m == 0:
        raise ValueError("an audit needs at least one canary")
    arrays = {}
    for name, values in named.items():
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != inc.shape:
            raise ValueError(f"scores {name!r} and included must have the same length")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"scores {name!r} must be finite")
        arrays[name] = arr
    picks = list(choices) if choices is not None else default_choices(m)
    if not picks:
        raise ValueError("no (k₊, k₋) choice to try")
    level = beta / (len(picks) * len(arrays))
    cands = []
    for name, arr in arrays.items():
        for k_pos, k_neg in picks:
            r, v = count_correct(arr, inc, k_pos, k_neg)
            cands.append(Candidate(name, k_pos, k_neg, r, v,
                                   epsilon_lower_bound(m, r, v, delta, level)))
    best = max(cands, key=lambda c: (c.epsilon, c.correct / max(c.guesses, 1)))
    ordered = np.sort(arrays[best.statistic])
    return AuditResult(best.epsilon, delta, beta, m, int(inc.sum()), best.statistic,
                       best.k_pos, best.k_neg, best.guesses, best.correct,
                       float(ordered[m - best.k_pos]) if best.k_pos else None,
                       float(ordered[best.k_neg - 1]) if best.k_neg else None, cands)
