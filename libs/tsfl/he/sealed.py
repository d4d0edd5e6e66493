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
from typing import Any

import numpy as np

from tsfl.he.errors import HeError
from tsfl.he.keys import PublicKeySet, SecretKeySet
from tsfl.he.signing import frame, split_frame


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

    def to_bytes(self, prime: int) -> bytes:
        """``>I`` header length, the msgpack header, then the coefficients packed to
        ⌈log2 q / 8⌉ little-endian bytes each (unsigned: the device signs it with
        :func:`tsfl.he.signing.sign_section`)."""
        width = coeff_bytes(prime)
        raw = np.ascontiguousarray(self.polys, dtype="<u8").view(np.uint8).reshape(-1, 8)
        return frame({"key": self.key_id, "n": self.size, "w": self.weight,
                      "t": self.terms, "b": width}, raw[:, :width].tobytes())

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, public: PublicKeySet, size: int,
                   max_terms: int | None = None) -> SealedVector:
        """Parse and check everything: key, size, weight, terms, the byte count, and that
        every coefficient is below q."""
        head, coeffs = parse_section(data, public, size, max_terms)
        polys = widen(coeffs, coeff_bytes(public.prime))
        if int(polys.max()) >= public.prime:
            raise HeError("ciphertext", "a coefficient is not reduced mod q")
        return cls(head["key"], size, float(head["w"]), head["t"],
                   polys.reshape(-1, 2, public.params.poly_degree))


_MAX_HEAD = 1024


def parse_section(data: bytes | memoryview, public: PublicKeySet, size: int,
                  max_terms: int | None = None) -> tuple[dict[str, Any], memoryview]:
    """The checked header of an encrypted section (as received, its signature block
    included: :mod:`tsfl.he.signing` checks it) and a zero-copy view of its packed
    coefficients (their count is exact; their values are not looked at)."""
    p = public.params
    head, coeffs = split_frame(data, _MAX_HEAD, max_bin_len=64, max_array_len=0,
                               max_map_len=8, max_str_len=256)
    key, n, w, t, b = (head.get(k) for k in ("key", "n", "w", "t", "b"))
    if key != public.key_id:
        raise HeError("key", f"encrypted under key {key!r}, the job's is {public.key_id!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n != size:
        raise HeError("sealed", f"encrypted section holds {n!r} values, {size} expected")
    if not isinstance(w, int | float) or isinstance(w, bool) or not (
            math.isfinite(w) and w > 0):
        raise HeError("sealed", f"weight must be a positive number, got {w!r}")
    limit = max_terms if max_terms is not None else p.max_terms
    if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= limit:
        raise HeError("sealed", f"terms must be in 1..{limit}, got {t!r}")
    width = coeff_bytes(public.prime)
    expect = ciphertext_count(size, p.reals_per_ciphertext) * 2 * p.poly_degree * width
    if b != width or len(coeffs) != expect:
        raise HeError("sealed", f"expected {expect} bytes of {width}-byte coefficients")
    return head, coeffs


def widen(data: bytes | memoryview, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """``width``-byte little-endian integers → uint64 (into ``out`` when given) in one
    pass: an overlapping strided view reads 8 bytes at every ``width``-th byte and a mask
    keeps the low ``width``; the last few, whose 8-byte read would run past the end, go
    through a small padded copy."""
    buf = np.frombuffer(data, dtype=np.uint8)
    count = buf.size // width
    if out is None:
        out = np.empty(count, dtype=np.uint64)
    if width == 8:
        out[:] = buf.view("<u8")
        return out
    safe = max(0, (buf.size - 8) // width + 1)  # the i with i·width + 8 ≤ size
    mask = np.uint64((1 << (8 * width)) - 1)
    if safe:
        view = np.ndarray((safe,), dtype="<u8", buffer=buf, strides=(width,))
        np.bitwise_and(view, mask, out=out[:safe])
    if safe < count:
        tail = np.zeros((count - safe) * width + 8, dtype=np.uint8)
        tail[:(count - safe) * width] = buf[safe * width:]
        rest = np.ndarray((count - safe,), dtype="<u8", buffer=tail, strides=(width,))
        np.bitwise_and(rest, mask, out=out[safe:])
    return out


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
    """The server's streaming fold of encrypted vectors: one addition per coefficient per
    update, O(size) memory, nothing but the public parameters.

    Reduction mod q is lazy: coefficients are below q < 2^60, so ⌊(2^64 − 1) / q⌋ of them
    add up in uint64 without wrapping; the sum is reduced only when the next addition
    could wrap, and at the end.
    """

    def __init__(self, public: PublicKeySet, size: int):
        self.public = public
        self.size = size
        self._q = np.uint64(public.prime)
        self._width = coeff_bytes(public.prime)
        # coefficients are below 2^(8·width) unchecked, below q checked (8-byte ones are
        # always checked): this many of them add up in uint64 without wrapping
        top = public.prime if self._width == 8 else (1 << (8 * self._width)) - 1
        self._room = ((1 << 64) - 1) // top
        self._shape = (ciphertext_count(size, public.params.reals_per_ciphertext), 2,
                       public.params.poly_degree)
        self._acc: np.ndarray | None = None
        self._scratch: np.ndarray | None = None
        self._pending = 0  # unreduced terms in the accumulator
        self.weight = 0.0
        self.terms = 0

    def add_section(self, data: bytes | memoryview, max_terms: int | None = 1, *,
                    check: bool = False) -> None:
        """Add an encrypted section straight from its bytes (the he service's path): the
        coefficients are widened into a reused buffer and added, with no copy of the
        section. ``check=False`` trusts that each is below q (the coordinator checked at
        the edge); a bad one could make the sum wrong, never wrap it."""
        head, coeffs = parse_section(data, self.public, self.size, max_terms)
        self._admit(head["key"], head["t"])
        if self._scratch is None:
            self._scratch = np.empty(self._shape, dtype=np.uint64)
        polys = widen(coeffs, self._width, self._scratch.reshape(-1))
        if (check or self._width == 8) and int(polys.max()) >= self.public.prime:
            raise HeError("ciphertext", "a coefficient is not reduced mod q")
        self._accumulate(polys.reshape(self._shape))
        self.weight += float(head["w"])
        self.terms += head["t"]

    def _admit(self, key_id: str, terms: int) -> None:
        if key_id != self.public.key_id:
            raise HeError("sealed", "encrypted vector of another key")
        if self.terms + terms > self.public.params.max_terms:
            raise HeError("sealed", (
                f"more than {self.public.params.max_terms} encrypted terms in one sum: the "
                "parameters' precision holds for at most that many"))

    def _accumulate(self, polys: np.ndarray) -> None:
        if self._acc is None:
            self._acc = polys.copy()
            self._pending = 1
            return
        if self._pending + 1 > self._room:
            self._reduce()
        np.add(self._acc, polys, out=self._acc)
        self._pending += 1

    def add(self, sealed: SealedVector) -> None:
        if sealed.size != self.size:
            raise HeError("sealed", "encrypted vector of another size")
        self._admit(sealed.key_id, sealed.terms)
        self._accumulate(sealed.polys)
        self.weight += sealed.weight
        self.terms += sealed.terms

    def _reduce(self) -> None:
        assert self._acc is not None
        np.remainder(self._acc, self._q, out=self._acc)
        self._pending = 1  # a reduced accumulator counts as one term below q ≤ top

    def result(self) -> SealedVector:
        if self._acc is None:
            raise HeError("sealed", "nothing was added")
        if self._pending > 1:
            self._reduce()
        return SealedVector(self.public.key_id, self.size, self.weight, self.terms,
                            self._acc.copy())
