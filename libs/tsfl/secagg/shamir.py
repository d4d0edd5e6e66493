"""Shamir secret sharing over GF(p), p = 2^521 − 1 (a Mersenne prime above any 32-byte secret).

A secret s is the constant term of a random polynomial f of degree t − 1; share i is
(i, f(i)). Any t shares give s by Lagrange interpolation at 0; fewer reveal nothing
(Shamir 1979). Coefficients come from ``secrets`` (a CSPRNG).
"""

from __future__ import annotations

import secrets

from tsfl.errors import TsflError

PRIME = (1 << 521) - 1
SECRET_BYTES = 32


class ShamirError(TsflError, ValueError):
    pass


def split(secret: bytes, threshold: int, xs: list[int]) -> dict[int, int]:
    """Shares of ``secret`` at the points ``xs`` (distinct, 1 ≤ x < p), ``threshold`` needed."""
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"a secret is {SECRET_BYTES} bytes")
    if not 1 <= threshold <= len(xs):
        raise ShamirError(f"threshold {threshold} must be in 1..{len(xs)}")
    if len(set(xs)) != len(xs) or not all(0 < x < PRIME for x in xs):
        raise ShamirError("share points must be distinct and non-zero")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME)
                                                for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        shares[x] = acc
    return shares


def combine(shares: dict[int, int], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (x → y)."""
    if len(shares) < threshold:
        raise ShamirError(f"{len(shares)} shares, {threshold} needed")
    points = list(shares.items())[:threshold]
    if len({x for x, _ in points}) != len(points) or not all(
            0 < x < PRIME and 0 <= y < PRIME for x, y in points):
        raise ShamirError("shares must have distinct non-zero points and values below p")
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * -xj % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise ShamirError("shares do not combine to a secret (inconsistent shares)")
    return secret.to_bytes(SECRET_BYTES, "big")
