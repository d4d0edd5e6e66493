"""Threshold RLWE encryption of real vectors: key material, encryption, partial
decryption, combination. Only additions are ever applied to ciphertexts.

Following Mouchet, Troncoso-Pastoriza, Bossuat and Hubaux, "Multiparty Homomorphic
Encryption from Ring-Learning-with-Errors" (PETS 2021), with the t-out-of-N variant of
Mouchet, Bertrand and Hubaux, "An Efficient Threshold Access-Structure for RLWE-Based
Multiparty Homomorphic Encryption" (J. Cryptology 2023; ePrint 2022/780):

- **collective key** (2021, Protocol 1, EncKeyGen): a common reference polynomial
  a ← U(R_q) from a public seed; silo i draws a ternary s_i and e_i ← χ and publishes
  p0_i = −a·s_i + e_i; pk = (Σ_i p0_i, a) is an encryption key for s = Σ_i s_i.
- **encryption** (2021, §2.2, public-key RLWE): u ternary, e0, e1 ← χ;
  ct = (c0, c1) = (pk0·u + e0 + ⌊Δm⌉, a·u + e1), and c0 + c1·s = ⌊Δm⌉ + e.
  Ciphertexts add coefficient-wise; the sum decrypts to the sum of the messages.
- **t-out-of-N secret** (2022, §4): silo i Shamir-shares s_i — f_i(X) = s_i + Σ_{l<t}
  r_{i,l} X^l over R_q — and silo j keeps S_j = Σ_i f_i(x_j). Any set T of t silos
  holds s = Σ_{j∈T} λ_j^T S_j (Lagrange at 0); fewer learn nothing about s.
- **partial decryption** (2021, Protocol 3, collective decryption, for the t silos of T):
  d_j = λ_j^T S_j · c1 + e_j with flooding noise e_j ← N(0, σ_f²); then
  c0 + Σ_{j∈T} d_j = ⌊Δm⌉ + e + Σ e_j, which decodes to m within the parameters'
  precision (:mod:`tsfl.he.threshold.params`).

Layout: a ciphertext array is (count, 2, k, N) uint64 — c0 in coefficient form, c1 in
NTT form (a partial decryption then costs one inverse NTT per limb) — and a key
polynomial (k, N) in NTT form. Reals are packed N per ciphertext, one per coefficient.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from tsfl.he.errors import HeError
from tsfl.he.threshold.params import NOISE_SIGMA, ThresholdParams
from tsfl.he.threshold.ring import Ring
from tsfl.he.threshold.sampling import Prg

CRS_LABEL = b"tsfl-he-crs"


@cache
def _ring(n: int, primes: tuple[int, ...]) -> Ring:
    return Ring(n, primes)


def ring_of(params: ThresholdParams) -> Ring:
    return _ring(params.poly_degree, params.primes)


def ciphertext_count(size: int, params: ThresholdParams) -> int:
    return max(1, math.ceil(size / params.poly_degree))


# -- key material ------------------------------------------------------------------------------
def common_polynomial(params: ThresholdParams, seed: bytes) -> np.ndarray:
    """The CRS a (NTT form, (k, N)): uniform, expanded from a public seed."""
    ring = ring_of(params)
    return Prg.derived(seed, CRS_LABEL).uniform_mod(ring.primes, (ring.k, ring.n))


def secret_polynomial(params: ThresholdParams, prg: Prg) -> np.ndarray:
    """A silo's ternary secret s_i in NTT form (k, N)."""
    ring = ring_of(params)
    return ring.ntt(ring.from_signed(prg.ternary(ring.n))[None])[0]


def public_share(params: ThresholdParams, a: np.ndarray, s: np.ndarray, prg: Prg
                 ) -> np.ndarray:
    """p0_i = −a·s_i + e_i (NTT form)."""
    ring = ring_of(params)
    e = ring.ntt(ring.from_signed(prg.gaussian(ring.n, NOISE_SIGMA).astype(np.int64))[None])
    return ring.sub(e[0], ring.mul(a, s))


def collective_key(params: ThresholdParams, shares: list[np.ndarray]) -> np.ndarray:
    """pk0 = Σ_i p0_i."""
    ring = ring_of(params)
    total = np.zeros((ring.k, ring.n), dtype=np.uint64)
    for p0 in shares:
        total = ring.add(total, p0)
    return total


def shamir_shares(params: ThresholdParams, s: np.ndarray, xs: list[int], prg: Prg
                  ) -> dict[int, np.ndarray]:
    """f_i(x) for each x of ``xs``: f_i(0) = s, degree t − 1, random coefficients
    uniform in R_q (Shamir's scheme applied coefficient-wise, per RNS limb, in NTT form
    — the sharing is linear, so it commutes with the NTT)."""
    ring = ring_of(params)
    coeffs = [s] + [prg.uniform_mod(ring.primes, (ring.k, ring.n))
                    for _ in range(params.threshold - 1)]
    out = {}
    for x in xs:
        acc = np.zeros((ring.k, ring.n), dtype=np.uint64)
        for c in reversed(coeffs):  # Horner in x
            acc = ring.add(ring.scale(acc, np.array([x % p for p in ring.primes],
                                                    dtype=np.uint64)), c)
        out[x] = acc
    return out


def combine_shares(params: ThresholdParams, received: list[np.ndarray]) -> np.ndarray:
    """S_j = Σ_i f_i(x_j): a silo's share of s."""
    return collective_key(params, received)


# -- encryption --------------------------------------------------------------------------------
def encode(params: ThresholdParams, values: np.ndarray) -> np.ndarray:
    """⌊Δ·v⌉ as residues, N values per polynomial: (count, k, N)."""
    ring = ring_of(params)
    v = np.asarray(values, dtype=np.float64).ravel()
    count = ciphertext_count(v.size, params)
    padded = np.zeros(count * ring.n, dtype=np.float64)
    padded[:v.size] = v
    return ring.from_float_integers(np.rint(padded * params.scale).reshape(count, ring.n))


def encrypt(params: ThresholdParams, pk0: np.ndarray, a: np.ndarray, values: np.ndarray,
            prg: Prg | None = None) -> np.ndarray:
    """Public-key encryption of ``values`` under (pk0, a): (count, 2, k, N)."""
    ring = ring_of(params)
    prg = prg or Prg.fresh()
    m = encode(params, values)
    count = m.shape[0]
    u = ring.ntt(ring.from_signed(prg.ternary(count * ring.n).reshape(count, ring.n)))
    e0 = ring.from_signed(prg.gaussian(count * ring.n, NOISE_SIGMA).astype(np.int64)
                          .reshape(count, ring.n))
    e1 = ring.from_signed(prg.gaussian(count * ring.n, NOISE_SIGMA).astype(np.int64)
                          .reshape(count, ring.n))
    out = np.empty((count, 2, ring.k, ring.n), dtype=np.uint64)
    out[:, 0] = ring.add(ring.add(ring.intt(ring.mul(u, pk0)), e0), m)
    out[:, 1] = ring.add(ring.mul(u, a), ring.ntt(e1))
    return out


# -- decryption --------------------------------------------------------------------------------
def partial_decrypt(params: ThresholdParams, share: np.ndarray, lagrange: np.ndarray,
                    c1: np.ndarray, prg: Prg | None = None) -> np.ndarray:
    """d_j = λ_j S_j · c1 + e_j (coefficient form, (count, k, N)) for the c1 parts
    (count, k, N) of a ciphertext array, with flooding noise of σ_f."""
    ring = ring_of(params)
    prg = prg or Prg.fresh()
    d = ring.intt(ring.mul(c1, ring.scale(share, lagrange)))
    flood = prg.gaussian(d.shape[0] * ring.n, params.flood_sigma)
    return ring.add(d, ring.from_float_integers(flood.reshape(d.shape[0], ring.n)))


def combine(params: ThresholdParams, c0: np.ndarray, partials: list[np.ndarray],
            size: int) -> np.ndarray:
    """m ≈ (c0 + Σ d_j) / Δ: the first ``size`` reals (float64)."""
    ring = ring_of(params)
    if not partials:
        raise HeError("opening", "no partial decryption to combine")
    acc = c0.copy()
    for d in partials:  # terms below 2^30: lazily added, reduced once
        if d.shape != c0.shape:
            raise HeError("opening", "a partial decryption has the wrong shape")
        np.add(acc, d, out=acc)
    return decode(params, ring.reduce(acc), size)


def decode(params: ThresholdParams, residues: np.ndarray, size: int) -> np.ndarray:
    """Reduced residues (count, k, N) of Δm + e → the first ``size`` reals of m."""
    return (ring_of(params).centered(residues) / params.scale).ravel()[:size]


def decrypt_with_secret(params: ThresholdParams, s: np.ndarray, ct: np.ndarray,
                        size: int) -> np.ndarray:
    """Decrypt with the whole secret s (tests and attack simulations only: no party
    ever holds s)."""
    ring = ring_of(params)
    d = ring.intt(ring.mul(ct[:, 1], s))
    return combine(params, ct[:, 0], [d], size)
