"""CKKS parameters chosen from the precision a job needs, checked against 128-bit security.

Only additions happen on the server (clients pre-scale by their weight), so a ciphertext
needs a single data prime q and no special prime: no relinearization or rotation keys
exist at all. The size of q is the budget

    log2 q  ≥  log2 Δ  +  log2(value_bound)  +  2          (sign and one bit of margin)

where the scale Δ makes the decryption error of a sum of K fresh ciphertexts smaller than
``precision``. Each coefficient of a fresh symmetric encryption carries error e ~ N(0, σ²)
(σ = 3.2, SEAL's default) plus the encoding's rounding (variance 1/12); decoding is the
canonical embedding, so a slot's real and imaginary parts each see a Gaussian of standard
deviation √(K(σ² + 1/12)) · √(N/2) (measured within 2% of this; tests/he/test_he.py), and
we bound it at 8 standard deviations (a chance ~1e-15 per value of exceeding it):

    Δ  ≥  8 √(K(σ² + 1/12)) √(N/2) / precision.

Security follows the Homomorphic Encryption Standard (Albrecht et al., 2018, Table 1:
the largest log2 q per ring dimension N for 128/192/256-bit classical security, uniform
ternary secret — the same bounds SEAL enforces).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from tsfl.he.errors import HeError

#: HE Standard, Table 1: security level → {ring dimension N → max log2 q}
MAX_LOG_Q: dict[int, dict[int, int]] = {
    128: {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881},
    192: {1024: 19, 2048: 37, 4096: 75, 8192: 152, 16384: 305, 32768: 611},
    256: {1024: 14, 2048: 29, 4096: 58, 8192: 118, 16384: 237, 32768: 476},
}
#: SEAL's largest single prime (a ciphertext here has exactly one)
MAX_PRIME_BITS = 60
#: std of the fresh-encryption error per coefficient (SEAL's default)
NOISE_SIGMA = 3.2
#: decryption error bound, in standard deviations
TAIL_SIGMAS = 8.0
#: the ring dimension chosen when none is given and security allows it (more slots per
#: ciphertext amortize the per-ciphertext costs; the expansion does not depend on N)
DEFAULT_POLY_DEGREE = 8192


@dataclass(frozen=True)
class CkksParams:
    """One job's CKKS parameters. ``scale_bits`` is log2 Δ; ``prime_bits`` the data prime;
    ``max_terms`` the most ciphertexts the parameters guarantee ``precision`` for."""

    poly_degree: int
    prime_bits: int
    scale_bits: int
    security: int
    max_terms: int
    precision: float
    value_bound: float

    @property
    def slots(self) -> int:
        """Complex slots per ciphertext; each holds two reals."""
        return self.poly_degree // 2

    @property
    def reals_per_ciphertext(self) -> int:
        return self.poly_degree

    def error_bound(self, terms: int) -> float:
        """The decryption error bound of a sum of ``terms`` ciphertexts (absolute)."""
        return noise_std(self.poly_degree, terms) * TAIL_SIGMAS / 2.0 ** self.scale_bits

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> CkksParams:
        if not isinstance(raw, dict):
            raise HeError("params", "CKKS parameters must be a mapping")
        try:
            params = cls(**{k: raw[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise HeError("params", f"CKKS parameters are incomplete: {exc}") from None
        check_params(params)
        return params


def noise_std(poly_degree: int, terms: int) -> float:
    """Standard deviation (in units of Δ·value) of a slot part of a sum of fresh
    encryptions (module docstring)."""
    return math.sqrt(terms * (NOISE_SIGMA**2 + 1 / 12)) * math.sqrt(poly_degree / 2)


def check_params(p: CkksParams) -> None:
    """Refuse parameters below their security level or unable to hold their values."""
    bounds = MAX_LOG_Q.get(p.security)
    if bounds is None:
        raise HeError("params", f"security must be one of {sorted(MAX_LOG_Q)} bits, "
                                f"got {p.security}")
    if p.poly_degree not in bounds:
        raise HeError("params", f"poly_degree must be one of {sorted(bounds)}, "
                                f"got {p.poly_degree}")
    if not 20 <= p.prime_bits <= MAX_PRIME_BITS:
        raise HeError("params", f"prime_bits must be in 20..{MAX_PRIME_BITS}, "
                                f"got {p.prime_bits}")
    if p.prime_bits > bounds[p.poly_degree]:
        raise HeError("params", (
            f"a {p.prime_bits}-bit modulus with N = {p.poly_degree} is below {p.security}-bit "
            f"security (the HE standard allows at most {bounds[p.poly_degree]} bits); "
            "use a larger poly_degree"))
    if not 1 <= p.scale_bits < p.prime_bits - 1:
        raise HeError("params", f"scale_bits must be in 1..{p.prime_bits - 2}")
    if not (p.precision > 0 and p.value_bound > 0 and p.max_terms >= 1):
        raise HeError("params", "precision, value_bound and max_terms must be positive")
    room = p.prime_bits - p.scale_bits - 2
    if math.log2(p.value_bound) > room:
        raise HeError("params", (
            f"value_bound {p.value_bound:g} needs {math.ceil(math.log2(p.value_bound))} "
            f"integer bits, a {p.prime_bits}-bit prime at scale 2^{p.scale_bits} has {room}"))


def checked_bounds(precision: float, value_bound: float, max_terms: int,
                   security: int) -> dict[int, int]:
    """The HE Standard's ring → max log2 q table for ``security``, after checking the
    inputs every parameter choice shares (shared-key CKKS and threshold keying)."""
    if not (precision > 0 and math.isfinite(precision)):
        raise HeError("params", f"precision must be a positive number, got {precision}")
    if not (value_bound > 0 and math.isfinite(value_bound)):
        raise HeError("params", f"value_bound must be a positive number, got {value_bound}")
    if max_terms < 1:
        raise HeError("params", f"max_terms must be >= 1, got {max_terms}")
    bounds = MAX_LOG_Q.get(security)
    if bounds is None:
        raise HeError("params", f"security must be one of {sorted(MAX_LOG_Q)} bits, "
                                f"got {security}")
    return bounds


def choose_params(precision: float, value_bound: float, max_terms: int, *,
                  security: int = 128, poly_degree: int | None = None,
                  size: int | None = None) -> CkksParams:
    """The parameters that decrypt a sum of ``max_terms`` encrypted vectors, each sum
    coordinate within ±``value_bound``, to ``precision`` (absolute), at ``security`` bits.

    ``poly_degree`` None picks, among the secure rings from 2048 up, the one whose
    ciphertexts pad a vector of ``size`` values least (ties: the larger ring, fewer
    ciphertexts); without a size, :data:`DEFAULT_POLY_DEGREE`. An explicit ring below
    the security level is refused.
    """
    bounds = checked_bounds(precision, value_bound, max_terms, security)
    if poly_degree is not None:
        candidates = [poly_degree]
    elif size is not None and size > 0:
        rings = [n for n in sorted(bounds) if n >= 2048]
        candidates = sorted(rings, key=lambda n: (math.ceil(size / n) * n, -n))
    else:
        candidates = [DEFAULT_POLY_DEGREE, *sorted(bounds)]
    last: HeError | None = None
    for n in candidates:
        if n not in bounds:
            raise HeError("params", f"poly_degree must be one of {sorted(bounds)}, got {n}")
        scale_bits = max(1, math.ceil(math.log2(
            TAIL_SIGMAS * noise_std(n, max_terms) / precision)))
        prime_bits = max(20, scale_bits + math.ceil(math.log2(value_bound)) + 2)
        if prime_bits > MAX_PRIME_BITS:
            raise HeError("params", (
                f"precision {precision:g} over ±{value_bound:g} for {max_terms} clients needs a "
                f"{prime_bits}-bit modulus; one CKKS prime holds at most {MAX_PRIME_BITS}: "
                "loosen crypto.he.precision or value_bound"))
        params = CkksParams(n, prime_bits, scale_bits, security, max_terms, precision,
                            value_bound)
        try:
            check_params(params)
        except HeError as exc:
            last = exc
            continue
        return params
    assert last is not None
    raise last
