"""Integer DP noise: the discrete Laplace and the discrete Gaussian on Z, sampled exactly.

Why: a floating-point sampler (Box–Muller, inverse CDF) added to a float vector releases
values whose set of possible low-order bits depends on the input — Mironov's
least-significant-bit attack ("On Significance of the Least Significant Bits for
Differential Privacy", CCS 2012). The Gaussian and Laplace mechanisms
(:mod:`tsfl.privacy.mechanisms`) therefore round their input onto a grid γ·Z and add the
integer noise sampled here, so the output set (γ·Z) never depends on the input.

Distributions (Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential
Privacy", NeurIPS 2020, arXiv:2004.00010; with q = e^{−1/t}):

    Lap_Z(t):      P[Y = y] = (1 − q)/(1 + q) · q^{|y|} = tanh(1/(2t)) · e^{−|y|/t}        (L)
    N_Z(0, σ²):    P[Y = y] = e^{−y²/(2σ²)} / Σ_{z∈Z} e^{−z²/(2σ²)}   (their Definition 1)  (G)

Samplers (vectorised over numpy int64, rejection in batches until ``size`` are accepted):

- Lap_Z(t) by the paper's Algorithm 2 with its rejection steps merged into one: propose a
  magnitude M = U + 2^m·V — U uniform on {0, …, 2^m − 1} with m = max(0, ⌊log₂ t⌋ − 3)
  (so 2^m ≤ t/8), V with P[V ≥ v] = e^{−λv}, λ = 2^m/t ∈ (1/16, 1/8] (λ = 1/t > 1/16 when
  m = 0), by inversion V = ⌊−ln W / λ⌋ — and a fair sign S; reject S = − with M = 0;
  accept with probability e^{−U/t}. An accepted ±y has probability ∝ e^{−2^m V/t}·e^{−U/t}
  = e^{−|y|/t} for either sign and y = 0 one sign only: (L) exactly. (Algorithm 2 writes
  X = U + t·V with U < t; a power-of-two block keeps U exactly m uniform bits and both
  Bernoulli rates away from 0.)
- N_Z(0, σ²) by Algorithm 3: t = ⌊σ⌋ + 1, Y ~ Lap_Z(t), accept with probability
  exp(−(|Y| − σ²/t)² / (2σ²)); because e^{−|y|/t} · e^{−(|y| − σ²/t)²/(2σ²)} =
  e^{−y²/(2σ²)} · e^{−σ²/(2t²)}, an accepted Y has pmf (G) exactly. The Laplace proposal's
  own acceptance e^{−U/t} is merged into this one (a rejection sampler whose proposal is a
  rejection sampler may accept once with the product of the two probabilities): one
  Bernoulli(e^{−x}) with x = U/t + (|Y| − σ²/t)²/(2σ²). Algorithm 3 alone accepts a fraction
  ρ(σ) ≥ 0.445 of its proposals for σ > 1/32 (0.76 for large σ); merged, 0.72–0.74 for
  large σ.

Every random decision above is one comparison "W < e^{−x}", i.e. "−ln W > x", between a
fresh uniform W and a rational x: x = U/t (+ the Gaussian term), x = λ·(v + 1) ("V > v")
— t and σ are float64 numbers, so exact dyadic rationals, and so are these x.

Where floating point appears, and why it does not reach the output. W is revealed B = 52
bits at a time (53 for ``SeededNoise``'s first draw): they place it in a cell
[a, a + 2^-B). The fast path computes p̂ = exp(−x̂) in float64 with a rigorous bound
|x̂ − x| ≤ e_x on the rounding of the few operations that give x̂, and assumes numpy's
``exp`` and ``log`` are within 2^-40 relative error on normal results (glibc and numpy's
SIMD kernels are within 4 ulp = 2^-50; a test checks 2^-45). It takes the decision from
floats only when the whole cell lies on one side of an interval
[p̂(1 − 2e_x − 2^-38), p̂(1 + 2e_x + 2^-38) + 2^-1000] known to contain e^{−x}; the
decision is then the exact one for every W in the cell. Otherwise — probability
≈ 2^-52 + 4e_x per comparison: below 5e-10 for Algorithm 3's acceptance, where a common
bound e_x = 2^-33 covers |Y| ≤ 64σ, and about 2^-20 + 1e-14 for V, whose cells below
2^-20 are all sent on — the slow path
refines W with further 52-bit chunks and bounds −ln of the cell's end points in decimal
arithmetic (``decimal``'s ``ln`` is correctly rounded; precision ≈ 0.31 digits per bit of W
plus 12) until the cell falls on one side of x. So acceptance probabilities below 2^-53
*can* fire and the tails are not truncated, and the relative error ≈ 2^-52 of a float
probability never decides a sample.

Residual, and what callers add to δ. Each slow-path comparison stops at 312 bits of W
(≥ 106 digits); one still undecided there is decided by the cell's midpoint. That needs
W within 2^-259 of e^{−x}, so a comparison can differ from the exact one with probability
τ ≤ 2^-256. Two truncations are kept below τ as well and counted as one comparison each:
magnitudes are capped below 2^61 and V below 2^53 (P[M ≥ 2^61] = e^{−2^61/t} ≤ e^{−512}
for t ≤ 2^52, so noise plus a grid value below 2^52 fits int64), and Lap_Z(t) with
t ≤ 2^-9 or N_Z(0, σ²) with σ ≤ 1/32 returns 0 (P[Y ≠ 0] < 2e^{−512}). Coupling the
sampler with an exact one on the same bits, they differ only if some comparison differs,
so by a union bound over comparisons the total-variation distance per coordinate is at
most N̄·τ, N̄ the expected number of comparisons per sample. (A comparison errs only for
W in a zone of measure ≤ 2^-259 next to e^{−x}; a fresh W falls there with probability
≤ τ whatever came before. The comparisons that decide one V share its W, but their
zones, which crowd towards 0, have a union of measure < 2^-256 too.)

    per proposal  ≤ 1 (acceptance) + 1 + E[V] (V's comparisons; E[V] < 1/λ < 16) + 1 (cap)
                  ≤ 19
    Lap_Z(t)      ≤ 1/(P[keep]·E[e^{−U/t}]) ≤ 1/(½·e^{−1/8}) < 2.27 proposals: N̄ = 48
    N_Z(0, σ²)    ≤ 2.27/ρ < 5.7 proposals (ρ ≥ 0.4):                          N̄ = 128

and over ``size`` coordinates and ``releases`` releases

    τ_total = releases · size · N̄ · 2^-256                  (:func:`float_residual_delta`).

If the exact mechanism is (ε, δ)-DP and the sampled one is within τ_total of it in total
variation on every input, the sampled one is (ε, δ + (1 + e^ε)·τ_total)-DP. The bound
assumes what every sampler assumes of its bits — that the source's bits are i.i.d. uniform
(PCG64 statistically, AES-CTR computationally) — and the 2^-40 accuracy of exp/log above.

Bits: :func:`uniform_cells` takes W's first cell from 52 bits of ``SecureNoise``'s AES-CTR
keystream, from 53 bits of ``SeededNoise``'s PCG64 (numpy's ``random``, k·2^-53), and from
any other source as ⌊u·2^52⌋ of ``source.uniform``, which is exactly uniform for uniforms
on the 2^-53 grid with 0 mapped to 2^-53 (what ``SeededNoise.uniform`` gives).
Reproducibility: with a seeded source the samples are a deterministic function of the seed;
which comparisons take the slow path depends on the platform's exp/log only in the
≈1e-10 borderline cases, where a different libm could consume the stream differently.
Cost: each proposal takes three draws, one log and one exp over numpy arrays; the slow
path runs a few times per million samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal
from fractions import Fraction

import numpy as np

from tsfl.privacy.noise import NoiseSource

BITS = 52  # bits of W revealed per refinement (53 for SeededNoise's first cell)
LIBM_RELATIVE_ERROR = 2.0 ** -40  # what the fast path assumes of numpy's exp and log
COMPARISON_RESIDUAL = 2.0 ** -256  # τ: per comparison, see the module docstring
MAX_SCALE = 2.0 ** 52  # largest t (discrete Laplace) or σ (discrete Gaussian)
MIN_ACCEPTANCE = 0.4  # lower bound on Algorithm 3's acceptance rate ρ(σ), σ > 1/32
COMPARISONS_PER_SAMPLE = {"laplace": 48, "gaussian": 128}  # N̄

_SLACK = 2.0 ** -38  # the libm error plus the rounding of the arithmetic around it
_TINY = 2.0 ** -1000  # ≥ e^{−700}: an upper bound for any probability that underflows
_SLOW_BITS = 312  # the slow path's last refinement of W
_CAP_LOG2 = 61  # magnitudes stay below 2^61
_ZERO_LAPLACE = 2.0 ** -9  # t at or below: Lap_Z(t) is 0 but for 2e^{−512}
_ZERO_GAUSSIAN = 1.0 / 32  # σ at or below: N_Z(0, σ²) is 0 but for 2e^{−512}


def uniform_cells(source: NoiseSource, size: int) -> tuple[np.ndarray, int]:
    """(a, B): ``size`` i.i.d. uniform a = k·2^-B, k an integer in [0, 2^B), as float64.

    A source's own ``cells`` where it has one (``SecureNoise``: B = 52, the top bits of
    each AES-CTR keystream word; ``SeededNoise``: B = 53, PCG64's ``random``). Otherwise
    B = 52 and k = ⌊u·2^52⌋ of ``source.uniform``: exact when its uniforms are
    (k + ½)·2^-52 or k·2^-53 with 0 replaced by 2^-53."""
    cells = getattr(source, "cells", None)
    if cells is not None:
        return cells(size)
    a = source.uniform(size) * 2.0 ** BITS
    np.floor(a, out=a)
    np.minimum(a, 2.0 ** BITS - 1, out=a)
    a *= 2.0 ** -BITS
    return a, BITS


def uniform_bits(source: NoiseSource, size: int) -> np.ndarray:
    """``size`` i.i.d. uniform integers in [0, 2^52), int64 (the top 52 bits of cells)."""
    a, _ = uniform_cells(source, size)
    return (a * 2.0 ** BITS).astype(np.int64)


def _neg_ln_bounds(num: int, bits: int, prec: int) -> tuple[Fraction, Fraction]:
    """Rationals lo ≤ −ln(num / 2^bits) ≤ hi, num ≥ 1, from ``prec``-digit decimals.

    The quotient and ``ln`` are each correctly rounded (relative error ≤ ½·10^{1−prec}),
    so |r − ln(num/2^bits)| ≤ 10^{1−prec}·(|r| + 2) for the computed r."""
    ctx = Context(prec=prec, Emin=MIN_EMIN, Emax=MAX_EMAX)
    v = -Fraction(ctx.ln(ctx.divide(Decimal(num), Decimal(1 << bits))))
    err = Fraction(abs(v) + 2, 10 ** (prec - 1))
    return v - err, v + err


class _LazyUniform:
    """A uniform W ∈ [num·2^-bits, (num + 1)·2^-bits), refined 52 bits at a time."""

    __slots__ = ("bits", "num", "source")

    def __init__(self, cell: float, bits: int, source: NoiseSource):
        self.num = int(cell * 2.0 ** bits)  # exact: cell = num·2^-bits
        self.bits = bits
        self.source = source

    def neg_log_exceeds(self, x: Fraction) -> bool:
        """Whether −ln W > x (W < e^{−x}): exact but with probability ≤ 2^-256."""
        if x <= 0:
            return True  # W < 1
        while True:
            prec = self.bits * 31 // 100 + 12
            b_lo, _ = _neg_ln_bounds(self.num + 1, self.bits, prec)
            if b_lo > x:  # −ln W > −ln b ≥ b_lo > x for every W in the cell
                return True
            a_hi = None
            if self.num:
                _, a_hi = _neg_ln_bounds(self.num, self.bits, prec)
                if a_hi <= x:  # −ln W ≤ −ln a ≤ a_hi ≤ x
                    return False
            if self.bits >= _SLOW_BITS:  # the cap that τ accounts for
                return a_hi is None or (b_lo + a_hi) / 2 > x
            self.num = (self.num << BITS) | int(uniform_bits(self.source, 1)[0])
            self.bits += BITS


def _accept(x_hat: np.ndarray, x_err: np.ndarray, exact: Callable[[int], Fraction],
            source: NoiseSource) -> np.ndarray:
    """Bernoulli(e^{−x}) for each x, given floats x̂ with |x̂ − x| ≤ ``x_err`` and the
    exact x of element i as ``exact(i)`` (asked on the slow path only)."""
    a, bits = uniform_cells(source, x_hat.size)  # W's cell is [a, a + 2^-bits)
    cell = 2.0 ** -bits
    p = np.negative(x_hat)
    np.exp(p, out=p)
    d = 2.0 * x_err
    d += _SLACK
    d *= p  # p̂·(2e_x + 2^-38)
    lo = p - d  # ≤ e^{−x̂}·e^{−e_x}·(1 − 2^-40) ≤ e^{−x}
    lo -= cell
    accept = a <= lo  # the whole cell lies below e^{−x}
    hi = p + d  # e^{e_x} ≤ 1 + 2e_x while e_x ≤ 1
    hi += _TINY  # a p̂ that underflows: e^{−x} < 2^-1000
    wide = np.flatnonzero(x_err > 1.0)
    if wide.size:  # only for x̂ ≳ 1e11, where e^{−x} < e^{−700} unless the bound is loose
        hi[wide] = np.where(x_hat[wide] - x_err[wide] > 700.0, _TINY, np.inf)
    unsure = a < hi
    unsure &= ~accept
    for i in np.flatnonzero(unsure):
        accept[i] = _LazyUniform(a[i], bits, source).neg_log_exceeds(exact(int(i)))
    return accept


def _inverse_geometric(lam: float, lam_exact: Fraction, size: int, vmax: int,
                       source: NoiseSource) -> np.ndarray:
    """V = ⌊−ln W / λ⌋, so P[V ≥ v] = e^{−λv}, as integer-valued float64 ≤ ``vmax``."""
    a, bits = uniform_cells(source, size)
    cell = 2.0 ** -bits
    g = a + cell  # the cell's top b, exact
    np.log(g, out=g)
    g *= -1.0 / lam  # −ln b / λ, within a factor 1 ± 2^-39
    v = g * (1.0 - _SLACK)
    np.floor(v, out=v)
    # −ln W ≤ −ln a = −ln b + ln(1 + cell/a) ≤ −ln b + cell/a on the cell, and
    # cell/(aλ) ≤ 2^-28 for a ≥ 2^-20 (λ > 1/16); smaller a (2^-20 of them) go slow
    hi = g + 2.0 ** -28
    hi *= 1.0 + _SLACK
    np.floor(hi, out=hi)
    unsure = hi != v
    unsure |= a < 2.0 ** -20
    for i in np.flatnonzero(unsure):
        w = _LazyUniform(a[i], bits, source)
        j = max(int(v[i]), 0)  # ≤ V: −ln W / λ ≥ −ln b / λ on the cell
        while j < vmax and w.neg_log_exceeds(lam_exact * (j + 1)):
            j += 1
        v[i] = j
    return v


def _block_log2(t: float) -> int:
    """m = max(0, ⌊log₂ t⌋ − 3): 2^m ≤ t/8 when m > 0, and λ = 2^m/t ∈ (1/16, 1/8]."""
    return max(0, math.frexp(t)[1] - 4)


class _Proposals:
    """``n`` proposals ±(U + 2^m·V) for Lap_Z(t), float64 (exact below 2^53), before
    the rejection: drop ``~keep`` (−0) and accept the rest with probability e^{−U/t}."""

    def __init__(self, t: float, n: int, source: NoiseSource):
        self.m = m = _block_log2(t)
        a, _ = uniform_cells(source, n)
        a *= 2.0 ** m
        self.u = u = np.floor(a)  # the top m bits (none when m = 0) …
        a -= u
        self.neg = a >= 0.5  # … and the next one, the sign
        # V < 2^53 keeps it exact in float64; P[V ≥ 2^53] = e^{−λ·2^53}, λ > 1/16
        self.v = _inverse_geometric(math.ldexp(1.0, m) / t, Fraction(1 << m) / Fraction(t),
                                    n, min(1 << (_CAP_LOG2 - m), 1 << 53) - 1, source)
        self.mag = self.v * 2.0 ** m
        self.mag += u  # |y|, rounded above 2^53 (float error analysis allows for it)
        self.keep = ~(self.neg & (self.mag == 0.0))

    def exact_mag(self, i: int) -> int:
        return int(self.u[i]) + (int(self.v[i]) << self.m)

    def values(self, ok: np.ndarray) -> np.ndarray:
        """The signed proposals at ``ok``, exactly, int64."""
        y = self.u[ok].astype(np.int64)
        y += self.v[ok].astype(np.int64) << self.m
        np.negative(y, out=y, where=self.neg[ok])
        return y


def _check(name: str, value: float, size: int) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= MAX_SCALE):
        raise ValueError(f"{name} must be in [0, 2^52], got {value!r}")
    if size < 0:
        raise ValueError(f"size must be ≥ 0, got {size}")


def _batch(need: int, rate: float) -> int:
    return int(need / rate * 1.03) + 64


def discrete_laplace(scale: float, size: int, source: NoiseSource) -> np.ndarray:
    """``size`` i.i.d. draws of Lap_Z(t), t = ``scale``: P[Y = y] = tanh(1/(2t))·e^{−|y|/t}
    ((L) in the module docstring), as int64, by Canonne et al.'s Algorithm 2."""
    _check("discrete Laplace scale", scale, size)
    if scale <= _ZERO_LAPLACE:
        return np.zeros(size, np.int64)
    t = float(scale)
    t_exact = Fraction(t)

    def accepted(prop: _Proposals) -> np.ndarray:
        ok = prop.keep
        if prop.m:
            x = prop.u / t

            def exact(i: int) -> Fraction:
                return Fraction(int(prop.u[i])) / t_exact

            ok &= _accept(x, x * 2.0 ** -52, exact, source)
        return ok

    return _fill(size, t, source, accepted, first_rate=0.9, min_rate=0.1)


def _fill(size: int, t: float, source: NoiseSource,
          accepted: Callable[[_Proposals], np.ndarray], *, first_rate: float,
          min_rate: float) -> np.ndarray:
    """Rejection sampling in vectorised batches: draw proposals (discrete Laplace of scale
    ``t``) sized by the acceptance rate seen so far, keep the ``accepted`` ones, until
    ``size`` are out."""
    out = np.empty(size, np.int64)
    filled, rate = 0, first_rate
    while filled < size:
        need = size - filled
        n = _batch(need, rate)
        prop = _Proposals(t, n, source)
        got = np.flatnonzero(accepted(prop))
        rate = max(got.size / n, min_rate)
        got = prop.values(got[:need])
        out[filled:filled + got.size] = got
        filled += got.size
    return out


def discrete_gaussian(sigma: float, size: int, source: NoiseSource) -> np.ndarray:
    """``size`` i.i.d. draws of N_Z(0, σ²): P[Y = y] ∝ e^{−y²/(2σ²)} (Canonne et al. 2020,
    Definition 1), as int64, by their Algorithm 3 in vectorised rejection batches.

    Its variance is slightly below σ² (the paper shows Var < σ²; the gap vanishes
    exponentially in σ²); the tests compute it from the pmf by summation."""
    _check("discrete Gaussian sigma", sigma, size)
    if sigma <= _ZERO_GAUSSIAN:
        return np.zeros(size, np.int64)
    sigma = float(sigma)
    t = float(math.floor(sigma) + 1)
    s_exact = Fraction(sigma) ** 2
    c_exact = s_exact / int(t)
    c = sigma * sigma / t  # σ²/t, relative error ≤ 2^-52

    def accepted(prop: _Proposals) -> np.ndarray:
        r = prop.mag - c
        r *= 1.0 / sigma
        x = r * r
        x *= 0.5
        x += prop.u * (1.0 / t)  # x = U/t + (|y| − σ²/t)²/(2σ²)
        # |x̂ − x| ≤ 2^-50·(|y| + c)/σ·(|r̂| + …) + 2^-51·x̂ ≤ 2^-48·x̂ + 2^-47·((|y| + c)/σ)²,
        # at most 2^-48·2049 + 2^-47·65² < 2^-34 while |y| ≤ 64σ (c < σ, x̂ ≤ ½·64² + ⅛);
        # beyond (probability e^{−63}), an infinite bound sends the comparison to the slow path
        err = np.where(prop.mag <= 64.0 * sigma, 2.0 ** -33, np.inf)
        ok = prop.keep

        def exact(i: int) -> Fraction:
            return (Fraction(int(prop.u[i])) / int(t)
                    + (prop.exact_mag(i) - c_exact) ** 2 / (2 * s_exact))

        ok &= _accept(x, err, exact, source)
        return ok

    return _fill(size, t, source, accepted, first_rate=0.7, min_rate=0.05)


def float_residual_delta(mechanism: object, size: int, releases: int = 1) -> float:
    """Upper bound on the total-variation distance between what the grid mechanism
    samples and its exact distribution over ``size`` coordinates and ``releases``
    releases: releases · size · N̄ · 2^-256, with N̄ = 128 (Gaussian) or 48 (Laplace) the
    expected comparisons per coordinate, each off with probability ≤ 2^-256 (module
    docstring). A mechanism exactly (ε, δ)-DP is (ε, δ + (1 + e^ε)·τ)-DP as sampled.

    ``mechanism`` is a mechanism (its ``name``) or a name: "gaussian" (also adaptive
    clipping's noisy count, one coordinate a release) or "laplace". The staircase
    mechanism is float-based and has no such bound: ValueError."""
    name = mechanism if isinstance(mechanism, str) else getattr(mechanism, "name", None)
    if name not in COMPARISONS_PER_SAMPLE:
        raise ValueError(f"no float residual bound for {name!r}: only the grid-based "
                         "gaussian and laplace mechanisms sample exactly")
    if size < 0 or releases < 0:
        raise ValueError("size and releases must be ≥ 0")
    return float(releases) * float(size) * COMPARISONS_PER_SAMPLE[name] * COMPARISON_RESIDUAL
