"""The ring R_q = Z_q[X]/(X^N + 1) in residue-number-system form.

q is a product of k primes p_0 … p_{k−1}, each below 2^30 and ≡ 1 (mod 2^16), so one list
of primes serves every ring dimension N ≤ 32768 and each limb has a negacyclic NTT
(:mod:`tsfl.he.threshold.ntt`). A polynomial is a uint64 array of shape (…, k, N): its
residues mod each p_i (the Chinese remainder theorem makes R_q ≅ Π R_{p_i}), so adding
and multiplying never leaves 64 bits (a product of two residues is below 2^60).

Only reconstruction leaves RNS: :meth:`Ring.centered` runs Garner's mixed-radix algorithm
(Garner, "The residue number system", IRE Trans. 1959) and decides the sign exactly from
the mixed-radix digits, so a value close to ±q/2 or to 0 never suffers cancellation —
then converts the magnitude to float64 (relative error 2^-53, far below the encoding's).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from tsfl.he.threshold.ntt import NegacyclicNtt

#: every prime is ≡ 1 mod this (2N for the largest ring, N = 32768)
PRIME_STEP = 1 << 16
PRIME_LIMIT = 1 << 30


def is_prime(n: int) -> bool:
    """Deterministic Miller–Rabin for n < 3.3·10^24 (bases: the first 13 primes)."""
    if n < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for b in bases:
        if n % b == 0:
            return n == b
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for b in bases:
        x = pow(b, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


@cache
def ntt_primes(count: int) -> tuple[int, ...]:
    """The ``count`` largest primes below 2^30 that are ≡ 1 (mod 2^16), descending."""
    out: list[int] = []
    c = (PRIME_LIMIT - 1) // PRIME_STEP * PRIME_STEP + 1
    while len(out) < count:
        if c < PRIME_LIMIT and is_prime(c):
            out.append(c)
        c -= PRIME_STEP
    return tuple(out)


class Ring:
    """R_q for ``n`` = N and ``primes`` = (p_0, …, p_{k−1})."""

    def __init__(self, n: int, primes: tuple[int, ...]):
        self.n = n
        self.primes = tuple(int(p) for p in primes)
        self.k = len(self.primes)
        self.q = int(np.prod([int(p) for p in self.primes], dtype=object))
        self._p = np.array(self.primes, dtype=np.uint64).reshape(self.k, 1)
        self._ntt = [NegacyclicNtt(n, p) for p in self.primes]
        # Garner: inverse of p_0 ⋯ p_{i−1} mod p_i
        self._garner = [pow(int(np.prod(self.primes[:i], dtype=object)) % p, -1, p)
                        for i, p in enumerate(self.primes)]
        half = (self.q - 1) // 2
        self._half_digits = self._digits_of(half)

    # -- shapes ------------------------------------------------------------------------------
    def check(self, a: np.ndarray) -> None:
        """Raise ValueError unless ``a`` is a polynomial array of this ring, reduced."""
        if a.ndim < 2 or a.shape[-2:] != (self.k, self.n) or a.dtype != np.uint64:
            raise ValueError(f"expected uint64 (…, {self.k}, {self.n}), got {a.dtype} "
                             f"{a.shape}")
        if (a >= self._p).any():
            raise ValueError("a residue is not reduced mod its prime")

    # -- arithmetic (all operands reduced, shapes broadcast) --------------------------------
    def _reduce_once(self, x: np.ndarray) -> np.ndarray:
        """x in [0, 2p) → [0, p), in place: min(x, x − p) (x − p wraps above x when x < p)."""
        np.minimum(x, x - self._p, out=x)
        return x

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._reduce_once(np.add(a, b))

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._reduce_once(a + (self._p - b))

    def neg(self, a: np.ndarray) -> np.ndarray:
        return self._reduce_once(self._p - a)

    def reduce(self, a: np.ndarray) -> np.ndarray:
        """Any uint64 residues (e.g. lazily added) → [0, p), in place."""
        return np.remainder(a, self._p, out=a)

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pointwise product mod each prime (NTT-domain multiplication)."""
        out = a * b
        np.remainder(out, self._p, out=out)
        return out

    def scale(self, a: np.ndarray, c: np.ndarray) -> np.ndarray:
        """``a`` times the per-limb constants ``c`` (shape (k,))."""
        return self.mul(a, np.asarray(c, dtype=np.uint64).reshape(self.k, 1))

    def ntt(self, a: np.ndarray) -> np.ndarray:
        return self._per_limb(a, forward=True)

    def intt(self, a: np.ndarray) -> np.ndarray:
        return self._per_limb(a, forward=False)

    def _per_limb(self, a: np.ndarray, *, forward: bool) -> np.ndarray:
        out = np.empty(a.shape, dtype=np.uint64)
        for i, t in enumerate(self._ntt):
            limb = np.ascontiguousarray(a[..., i, :]).reshape(-1, self.n)
            out[..., i, :] = (t.forward(limb) if forward else t.inverse(limb)).reshape(
                (*a.shape[:-2], self.n))
        return out

    def sum_reduce(self, a: np.ndarray, axis: int = 0) -> np.ndarray:
        """Σ along ``axis`` mod each prime (terms < 2^30: 2^34 of them fit in uint64)."""
        return np.remainder(a.sum(axis=axis, dtype=np.uint64), self._p)

    # -- conversions ---------------------------------------------------------------------
    def from_signed(self, x: np.ndarray) -> np.ndarray:
        """Integers |x| < 2^62 (int64, shape (…, N)) → residues (…, k, N)."""
        x = np.asarray(x, dtype=np.int64)
        if x.size and int(np.abs(x).max()) < min(self.primes):  # x + p ∈ (0, 2p): one step
            return self._reduce_once((x[..., None, :] + self._p.astype(np.int64))
                                     .astype(np.uint64))
        res = np.remainder(x[..., None, :], self._p.astype(np.int64))
        return res.astype(np.uint64)

    def from_float_integers(self, x: np.ndarray) -> np.ndarray:
        """Integer-valued floats (|x| < q/2, beyond 2^63 too) → residues (…, k, N),
        exactly: x is split into 30-bit digits with exact float operations (division by
        a power of two and flooring are exact; each remainder is a representable integer
        below 2^30)."""
        x = np.asarray(x, dtype=np.float64)
        if x.size == 0 or float(np.abs(x).max()) < 2.0**62:
            return self.from_signed(x.astype(np.int64))
        digits: list[np.ndarray] = []
        rest = x.copy()
        for _ in range(max(1, (self.q.bit_length() + 29) // 30)):
            hi = np.floor(rest / 2.0**30)
            digits.append((rest - hi * 2.0**30).astype(np.int64))
            rest = hi
        digits[-1] = digits[-1] + (rest * 2.0**30).astype(np.int64)  # the signed top
        out = np.zeros((*x.shape[:-1], self.k, self.n), dtype=np.int64)
        for i, p in enumerate(self.primes):
            acc = np.zeros(x.shape, dtype=np.int64)
            for d, digit in enumerate(digits):
                acc = (acc + digit * (pow(2, 30 * d, p))) % p
            out[..., i, :] = acc
        return out.astype(np.uint64)

    def _digits_of(self, value: int) -> list[int]:
        """Mixed-radix digits (v_0, …, v_{k−1}) of an integer 0 ≤ value < q."""
        digits = []
        for p in self.primes:
            digits.append(value % p)
            value //= p
        return digits

    def _mixed_radix(self, a: np.ndarray) -> list[np.ndarray]:
        """Garner: digits v_i < p_i with x = v_0 + v_1 p_0 + v_2 p_0 p_1 + ⋯ (x < q)."""
        digits: list[np.ndarray] = []
        for i, p in enumerate(self.primes):
            pu = np.uint64(p)
            acc = a[..., i, :].copy()
            radix = 1
            partial = np.zeros_like(acc)
            for j, v in enumerate(digits):  # x_i − (v_0 + v_1 p_0 + ⋯) mod p_i
                partial = (partial + v % pu * np.uint64(radix % p)) % pu
                radix *= self.primes[j]
            acc = (acc + (pu - partial)) % pu
            digits.append(acc * np.uint64(self._garner[i]) % pu)
        return digits

    def centered(self, a: np.ndarray) -> np.ndarray:
        """The representatives in (−q/2, q/2] of residues (…, k, N), as float64 (…, N)."""
        if self.k <= 2:  # q < 2^60: Garner in uint64, exact, then a signed shift
            x = a[..., 0, :].astype(np.int64)
            if self.k == 2:
                p0, p1 = (np.uint64(p) for p in self.primes)
                a0 = np.minimum(a[..., 0, :], a[..., 0, :] - p1)  # a0 mod p1 (p0 < 2 p1)
                v1 = (a[..., 1, :] + (p1 - a0)) * np.uint64(self._garner[1]) % p1
                x = (a[..., 0, :] + v1 * p0).astype(np.int64)
            x -= np.int64(self.q) * (x > np.int64((self.q - 1) // 2))
            return x.astype(np.float64)
        digits = self._mixed_radix(a)
        above = np.zeros(digits[0].shape, dtype=bool)  # x > (q − 1) / 2, top digit first
        equal = np.ones(digits[0].shape, dtype=bool)
        for v, h in zip(reversed(digits), reversed(self._half_digits), strict=True):
            above |= equal & (v > np.uint64(h))
            equal &= v == np.uint64(h)
        mag_digits = self._mixed_radix(np.where(above[..., None, :], self.neg(a), a))
        value = np.zeros(digits[0].shape, dtype=np.float64)
        for v, p in zip(reversed(mag_digits), reversed(self.primes), strict=True):
            value = value * float(p) + v.astype(np.float64)  # Horner, top digit first
        return np.where(above, -value, value)

    def lagrange_at_zero(self, xs: list[int]) -> dict[int, np.ndarray]:
        """λ_j = Π_{m ≠ j} x_m / (x_m − x_j) mod each prime: Σ λ_j f(x_j) = f(0) for a
        polynomial f of degree < len(xs) (Shamir 1979)."""
        if len(set(xs)) != len(xs) or not all(0 < x < min(self.primes) for x in xs):
            raise ValueError("interpolation points must be distinct and in 1..p−1")
        out = {}
        for j in xs:
            coeffs = []
            for p in self.primes:
                num, den = 1, 1
                for m in xs:
                    if m != j:
                        num = num * m % p
                        den = den * (m - j) % p
                coeffs.append(num * pow(den, -1, p) % p)
            out[j] = np.array(coeffs, dtype=np.uint64)
        return out
