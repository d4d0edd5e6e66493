"""Encrypted vectors: packing into CKKS slots, encryption, streaming sums, decryption.

A flat real vector is packed two values per complex slot (z_j = v_2j + i·v_2j+1), N/2
slots per ciphertext, so a ciphertext (two polynomials of N coefficients mod q) carries N
reals. On the wire a coefficient takes ⌈log2 q / 8⌉ bytes, so the expansion over float32
is 2·⌈log2 q / 8⌉ / 4: 3.5× for a 49-bit prime, never above 4× (q ≤ 2^60).

Adding ciphertexts is adding their polynomials coefficient-wise mod q (SEAL's
``add_inplace`` does exactly this per RNS limb; here there is one). The server does it
in numpy (:class:`SealedSum`) with nothing but q: it holds no key and runs no SEAL code,
and every input coefficient is checked to be below q before it is added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgpack
import numpy as np

from tsfl.he.errors import HeError
from tsfl.he.keys import PublicKeySet, SecretKeySet


def coeff_bytes(prime: int) -> int:
    return (prime.bit_length() + 7) // 8


def ciphertext_count(size: int, reals_per_ciphertext: int) -> int:
    return max(1, math.ceil(size / reals_per_ciphertext))


@dataclass
class SealedVector:
    """``size`` reals encrypted under ``key_id`` as ``polys`` (ciphertexts × 2 × N,
    uint64 < q); ``weight`` is the sum of the clients' pre-scale weights it carries and
    ``terms`` how many encryptions were added into it."""

    key_id: str
    size: int
    weight: float
    terms: int
    polys: np.ndarray

    def nbytes(self, prime: int) -> int:
        return int(self.polys.size) * coeff_bytes(prime)

    def to_bytes(self, prime: int) -> bytes:
        width = coeff_bytes(prime)
        raw = np.ascontiguousarray(self.polys, dtype="<u8").view(np.uint8).reshape(-1, 8)
        return msgpack.packb({"key": self.key_id, "n": self.size, "w": self.weight,
                              "t": self.terms, "b": width,
                              "d": raw[:, :width].tobytes()})

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, public: PublicKeySet, size: int,
                   max_terms: int | None = None) -> SealedVector:
        """Parse and check everything: key, size, weight, terms, the byte count, and that
        every coefficient is below q."""
        p = public.params
        count = ciphertext_count(size, p.reals_per_ciphertext)
        width = coeff_bytes(public.prime)
        expect = count * 2 * p.poly_degree * width
        try:
            raw = msgpack.unpackb(bytes(data), raw=False, max_bin_len=expect,
                                  max_array_len=0, max_map_len=8, max_str_len=256)
        except Exception as exc:  # msgpack raises several unrelated types
            raise HeError("sealed", f"unreadable encrypted section: {exc}") from None
        if not isinstance(raw, dict):
            raise HeError("sealed", "the encrypted section must be a map")
        key, n, w, t, b, d = (raw.get(k) for k in ("key", "n", "w", "t", "b", "d"))
        if key != public.key_id:
            raise HeError("key", f"encrypted under key {key!r}, the job's is "
                                 f"{public.key_id!r}")
        if not isinstance(n, int) or isinstance(n, bool) or n != size:
            raise HeError("sealed", f"encrypted section holds {n!r} values, {size} expected")
        if not isinstance(w, int | float) or isinstance(w, bool) or not (
                math.isfinite(w) and w > 0):
            raise HeError("sealed", f"weight must be a positive number, got {w!r}")
        limit = max_terms if max_terms is not None else p.max_terms
        if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= limit:
            raise HeError("sealed", f"terms must be in 1..{limit}, got {t!r}")
        if b != width or not isinstance(d, bytes) or len(d) != expect:
            raise HeError("sealed", f"expected {expect} bytes of {width}-byte coefficients")
        full = np.zeros((count * 2 * p.poly_degree, 8), dtype=np.uint8)
        full[:, :width] = np.frombuffer(d, dtype=np.uint8).reshape(-1, width)
        polys = full.view("<u8").reshape(count, 2, p.poly_degree)
        if int(polys.max()) >= public.prime:
            raise HeError("ciphertext", "a coefficient is not reduced mod q")
        return cls(key, n, float(w), t, polys)


def pack(values: np.ndarray, reals_per_ciphertext: int) -> np.ndarray:
    """Two reals per complex slot: (ciphertexts, slots) complex128."""
    v = np.asarray(values, dtype=np.float64).ravel()
    count = ciphertext_count(v.size, reals_per_ciphertext)
    padded = np.zeros(count * reals_per_ciphertext, dtype=np.float64)
    padded[:v.size] = v
    return (padded[0::2] + 1j * padded[1::2]).reshape(count, reals_per_ciphertext // 2)


def unpack(slots: np.ndarray, size: int) -> np.ndarray:
    z = slots.ravel()
    out = np.empty(2 * z.size, dtype=np.float64)
    out[0::2], out[1::2] = z.real, z.imag
    return out[:size]


def seal_vector(keys: SecretKeySet, values: np.ndarray, weight: float) -> SealedVector:
    """Encrypt ``values`` (already multiplied by ``weight`` by the caller)."""
    p = keys.params
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all():
        raise HeError("values", "cannot encrypt NaN or Inf")
    peak = float(np.abs(v).max()) if v.size else 0.0
    room = p.value_bound / p.max_terms
    if peak > room:
        raise HeError("values", (
            f"a value of magnitude {peak:.4g} exceeds this client's share of "
            f"crypto.he.value_bound ({p.value_bound:g} / {p.max_terms} clients = {room:.4g}); "
            "the encrypted sum could wrap: raise value_bound or weight_unit"))
    polys = np.stack([keys.context.encrypt(chunk)
                      for chunk in pack(v, p.reals_per_ciphertext)])
    return SealedVector(keys.key_id, int(v.size), float(weight), 1, polys)


def open_vector(keys: SecretKeySet, sealed: SealedVector) -> np.ndarray:
    """Decrypt ``sealed`` (any number of terms) back to its ``size`` reals (float64)."""
    if sealed.key_id != keys.key_id:
        raise HeError("key", f"encrypted under key {sealed.key_id!r}, this key is "
                             f"{keys.key_id!r}")
    slots = np.stack([keys.context.decrypt(c) for c in sealed.polys])
    return unpack(slots, sealed.size)


class SealedSum:
    """The server's streaming fold of encrypted vectors: one modular addition per
    coefficient per update, O(size) memory, nothing but the public parameters."""

    def __init__(self, public: PublicKeySet, size: int):
        self.public = public
        self.size = size
        self._q = np.uint64(public.prime)
        self._acc: np.ndarray | None = None
        self._over = np.empty(0, dtype=bool)
        self.weight = 0.0
        self.terms = 0

    def add(self, sealed: SealedVector) -> None:
        if sealed.key_id != self.public.key_id or sealed.size != self.size:
            raise HeError("sealed", "encrypted vector of another key or size")
        if self.terms + sealed.terms > self.public.params.max_terms:
            raise HeError("sealed", (
                f"more than {self.public.params.max_terms} encrypted terms in one sum: the "
                "parameters' precision holds for at most that many"))
        if self._acc is None:
            self._acc = sealed.polys.copy()
            self._over = np.empty(self._acc.shape, dtype=bool)
        else:  # both < q < 2^60: the sum cannot overflow 64 bits
            np.add(self._acc, sealed.polys, out=self._acc)
            np.greater_equal(self._acc, self._q, out=self._over)
            np.subtract(self._acc, self._q, out=self._acc, where=self._over)
        self.weight += sealed.weight
        self.terms += sealed.terms

    def result(self) -> SealedVector:
        if self._acc is None:
            raise HeError("sealed", "nothing was added")
        return SealedVector(self.public.key_id, self.size, self.weight, self.terms,
                            self._acc.copy())
