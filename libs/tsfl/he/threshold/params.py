"""Parameters of threshold CKKS-style aggregation: ring, RNS primes, scale and flooding.

The scheme (:mod:`tsfl.he.threshold.scheme`) only ever adds ciphertexts, so, as for the
shared-key path (:mod:`tsfl.he.params`), q is a data modulus and nothing else: no special
prime, no relinearization key. Reals are packed into coefficients (N per polynomial; the
decryption error of a coefficient is the error itself, with no canonical-embedding
factor), q is a product of k primes below 2^30 (:mod:`tsfl.he.threshold.ring`), and a
ciphertext is two polynomials of k residues, each sent in 30 bits: **1.875k × float32**
(3.75× for two primes).

Noise of one coefficient (σ = 3.2 for every error e, secrets and encryption randomness
uniform ternary, variance 2/3 a coefficient; n silos, s = Σ s_i, e_pk = Σ e_i):

    c0 + c1·s = Δm + e0 + e_pk·u + e1·s      (Mouchet et al. 2021, §4: public-key
                                               encryption under the collective key)
    Var = σ² (1 + (2/3)·N·n + (2/3)·N·n) + 1/12 (encoding)  =: v,   K fresh terms: K·v

A partial decryption adds **flooding noise** e_j ~ N(0, σ_f²) (Mouchet et al. 2021,
Protocol 3, "smudging": the decrypted sum must not reveal the ciphertext's noise, which
depends on s), t of them: the sum decrypts with error of standard deviation
σ_tot = √(K·v + t·σ_f²), bounded at 8σ_tot (a chance ~1e-15 per value). Hence

    Δ = 8 σ_tot / precision,     q > 2 (value_bound·Δ + 8 σ_tot)   (no wrap mod q).

Two flooding levels (``crypto.he.flooding``):

- ``fixed``: σ_f = 2^20, OpenFHE's ``FIXED_NOISE_MULTIPARTY`` (``NOISE_FLOODING::MP_SD``):
  about 2^9 times the sum's own noise for N = 4096, n = K = 10 — a heuristic margin, not a
  statistical proof — and the modulus stays at two primes (4× float32);
- ``statistical``: σ_f = 2^40 · B, B = 8√(K·v) the bound on the sum's noise: the
  statistical distance between a flooded and a noise-free decryption is ≤ 2^-40 per
  coefficient (smudging lemma). It costs ~40 more bits of q.

For n = K = 10 silos and terms, t = 6, at the 128-bit bounds of the HE Standard
(:data:`tsfl.he.params.MAX_LOG_Q`; the smallest ring that holds q is chosen):

    flooding      precision  value_bound  σ_f      log2 Δ  primes  log2 q  N     bytes ÷ f32
    fixed         1e-6       1e4          2^20     44.2    2       60      4096  3.75
    statistical   1e-6       1e4          2^54.7   78.9    4       120     8192  7.5
    statistical   1e-4       1e3          2^54.2   71.8    3       90      4096  5.63

(t = 10 adds 0.4 to log2 Δ; the fixed row still fits two primes.) The provable level does
not fit the 4× budget: it is offered, and its expansion is reported, not hidden.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tsfl.he.errors import HeError
from tsfl.he.params import MAX_LOG_Q, TAIL_SIGMAS, checked_bounds
from tsfl.he.threshold.ring import ntt_primes

NOISE_SIGMA = 3.2
#: OpenFHE's multiparty flooding standard deviation (FIXED_NOISE_MULTIPARTY)
FIXED_FLOOD_BITS = 20
#: statistical flooding: 2^-40 per coefficient
STATISTICAL_BITS = 40
MAX_PARTIES = 64
MAX_LIMBS = 8
Flooding = Literal["fixed", "statistical"]


def fresh_variance(n: int, parties: int) -> float:
    """Variance of one coefficient's noise in a fresh encryption (module docstring)."""
    return NOISE_SIGMA**2 * (1 + 4 * n * parties / 3) + 1 / 12


@dataclass(frozen=True)
class ThresholdParams:
    """One job's parameters; ``scale`` is Δ (a real, not a power of two)."""

    poly_degree: int
    primes: tuple[int, ...]
    scale: float
    security: int
    parties: int  # n: silos holding key shares
    threshold: int  # t: partial decryptions that open a sum
    max_terms: int  # K: encryptions per sum
    precision: float
    value_bound: float
    flooding: str
    flood_sigma: float

    @property
    def limbs(self) -> int:
        return len(self.primes)

    @property
    def q(self) -> int:
        return math.prod(self.primes)

    @property
    def reals_per_ciphertext(self) -> int:
        return self.poly_degree

    @property
    def expansion(self) -> float:
        """Ciphertext bytes per real ÷ 4 (float32): two polynomials of k 30-bit residues."""
        return 2 * self.limbs * 30 / 32

    def noise_std(self, terms: int) -> float:
        """σ_tot of a sum of ``terms`` encryptions opened by t partial decryptions."""
        return math.sqrt(terms * fresh_variance(self.poly_degree, self.parties)
                         + self.threshold * self.flood_sigma**2)

    def error_bound(self, terms: int) -> float:
        return TAIL_SIGMAS * self.noise_std(terms) / self.scale

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["primes"] = list(self.primes)
        return raw

    @classmethod
    def from_json(cls, raw: Any) -> ThresholdParams:
        if not isinstance(raw, dict):
            raise HeError("params", "threshold parameters must be a mapping")
        try:
            values = {k: raw[k] for k in cls.__dataclass_fields__}
            values["primes"] = tuple(int(p) for p in values["primes"])
            params = cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise HeError("params", f"threshold parameters are incomplete: {exc}") from None
        check_params(params)
        return params


def check_params(p: ThresholdParams) -> None:
    """Refuse parameters below their security level or unable to hold their values."""
    bounds = MAX_LOG_Q.get(p.security)
    if bounds is None or p.poly_degree not in bounds:
        raise HeError("params", f"no {p.security}-bit ring of degree {p.poly_degree}")
    if not 1 <= p.limbs <= MAX_LIMBS or p.primes != ntt_primes(p.limbs):
        raise HeError("params", "the primes are not the scheme's NTT primes")
    if p.q.bit_length() > bounds[p.poly_degree]:
        raise HeError("params", (
            f"a {p.q.bit_length()}-bit modulus with N = {p.poly_degree} is below "
            f"{p.security}-bit security (the HE standard allows at most "
            f"{bounds[p.poly_degree]} bits); use a larger poly_degree"))
    if not 2 <= p.threshold <= p.parties <= MAX_PARTIES:
        raise HeError("params", f"threshold keying needs 2 ≤ threshold ({p.threshold}) ≤ "
                                f"silos ({p.parties}, clients.count) ≤ {MAX_PARTIES} "
                                "(every silo holds a key share; for more devices use "
                                "keying: shared)")
    if not (p.precision > 0 and p.value_bound > 0 and p.max_terms >= 1 and p.scale > 1
            and p.flood_sigma > 0):
        raise HeError("params", "precision, value_bound, scale, flooding and max_terms must "
                                "be positive")
    if p.q <= 2 * (p.value_bound * p.scale + TAIL_SIGMAS * p.noise_std(p.max_terms)):
        raise HeError("params", "the modulus cannot hold value_bound at this scale")


def _flood_sigma(flooding: str, n: int, parties: int, max_terms: int) -> float:
    if flooding == "fixed":
        return float(2**FIXED_FLOOD_BITS)
    if flooding == "statistical":
        return 2.0**STATISTICAL_BITS * TAIL_SIGMAS * math.sqrt(
            max_terms * fresh_variance(n, parties))
    raise HeError("params", f"flooding must be fixed or statistical, got {flooding!r}")


def choose_params(precision: float, value_bound: float, max_terms: int, parties: int,
                  threshold: int, *, security: int = 128, flooding: str = "fixed",
                  poly_degree: int | None = None) -> ThresholdParams:
    """The smallest secure ring and fewest primes that decrypt a sum of ``max_terms``
    encryptions, each sum coordinate within ±``value_bound``, to ``precision``."""
    bounds = checked_bounds(precision, value_bound, max_terms, security)
    rings = [poly_degree] if poly_degree is not None else [n for n in sorted(bounds)
                                                           if n >= 2048]
    last: HeError | None = None
    for n in rings:
        if n not in bounds:
            raise HeError("params", f"poly_degree must be one of {sorted(bounds)}, got {n}")
        sigma_f = _flood_sigma(flooding, n, parties, max_terms)
        noise = math.sqrt(max_terms * fresh_variance(n, parties) + threshold * sigma_f**2)
        scale = TAIL_SIGMAS * noise / precision
        need = 2 * (value_bound * scale + TAIL_SIGMAS * noise)
        limbs = next((k for k in range(1, MAX_LIMBS + 1) if math.prod(ntt_primes(k)) > need),
                     None)
        if limbs is None:
            raise HeError("params", f"precision {precision:g} over ±{value_bound:g} needs "
                                    f"a {math.ceil(math.log2(need))}-bit modulus, more than "
                                    f"{MAX_LIMBS} primes: loosen crypto.he.precision")
        params = ThresholdParams(n, ntt_primes(limbs), scale, security, parties, threshold,
                                 max_terms, precision, value_bound, flooding, sigma_f)
        try:
            check_params(params)
        except HeError as exc:
            last = exc
            continue
        return params
    assert last is not None
    raise last
