"""The negacyclic number-theoretic transform mod one ~30-bit prime, in numpy.

Multiplying in Z_p[X]/(X^N + 1) is pointwise after this transform when p ≡ 1 (mod 2N):
with ψ a primitive 2N-th root of unity, NTT(a)_i = a(ψ^(2·br(i)+1)) (br: bit reversal),
computed by Cooley–Tukey butterflies with the powers of ψ merged into the twiddles
(Pöppelmann, Oder and Güneysu, "High-performance ideal lattice-based cryptography on
8-bit ATxmega microcontrollers", LATINCRYPT 2015, Alg. 1–2; Longa and Naehrig,
"Speeding up the number theoretic transform for faster ideal lattice-based cryptography",
CANS 2016), and its inverse by Gentleman–Sande butterflies.

Arithmetic: residues are uint64 holding values below 2^32. A product by a twiddle w uses
Shoup's precomputed quotient w' = ⌊w·2^32 / p⌋: for a < 2^32, q = ⌊a·w' / 2^32⌋ and
a·w − q·p lies in [0, 2p) — every product (a·w' and a·w) stays below 2^64 and no division
happens. Butterflies are Harvey's lazy ones ("Faster arithmetic for number-theoretic
transforms", J. Symb. Comp. 2014): values stay in [0, 4p) between stages, which is below
2^32 because p < 2^30, and are reduced once at the end.

Speed in numpy: a stage is ten in-place ufunc passes over a block of eight polynomials
(cache-resident), and the last four stages — whose butterflies pair neighbours fewer than
16 coefficients apart, which numpy iterates slowly — run on a transposed block where the
pairs are whole rows. The transposition is part of the transform's output order: any
fixed order serves for pointwise products, and :meth:`NegacyclicNtt.inverse` undoes it.
"""

from __future__ import annotations

import numpy as np

_U32 = np.uint64(32)
#: stages whose butterfly distance is below this run on the transposed layout
_LOW = 16
#: polynomials transformed together (their working set stays in cache)
_CHUNK = 8


def primitive_root_of_unity(p: int, order: int) -> int:
    """A primitive ``order``-th root of unity mod the prime ``p`` (``order`` a power of two
    dividing p − 1)."""
    if (p - 1) % order:
        raise ValueError(f"{order} does not divide p − 1 for p = {p}")
    for g in range(2, p):
        x = pow(g, (p - 1) // order, p)
        if pow(x, order // 2, p) == p - 1:
            return x
    raise ValueError(f"no primitive {order}-th root of unity mod {p}")


def _bit_reverse(n: int) -> np.ndarray:
    bits = n.bit_length() - 1
    idx = np.arange(n, dtype=np.int64)
    out = np.zeros(n, dtype=np.int64)
    for b in range(bits):
        out |= ((idx >> b) & 1) << (bits - 1 - b)
    return out


def _powers(root: int, n: int, p: int) -> np.ndarray:
    out = np.empty(n, dtype=np.uint64)
    acc = 1
    for i in range(n):
        out[i] = acc
        acc = acc * root % p
    return out


class NegacyclicNtt:
    """Forward and inverse negacyclic NTT of length ``n`` mod ``p`` (p < 2^30, p ≡ 1
    mod 2n) on arrays of shape (count, n) with entries in [0, p)."""

    def __init__(self, n: int, p: int):
        if n < 2 * _LOW or n & (n - 1):
            raise ValueError(f"NTT length must be a power of two ≥ {2 * _LOW}, got {n}")
        if not 2 < p < 1 << 30 or (p - 1) % (2 * n):
            raise ValueError(f"p = {p} must be a prime below 2^30 with p ≡ 1 mod {2 * n}")
        self.n, self.p = n, p
        psi = primitive_root_of_unity(p, 2 * n)
        rev = _bit_reverse(n)
        w = _powers(psi, n, p)[rev]
        iw = _powers(pow(psi, p - 2, p), n, p)[rev]
        self._k = n // _LOW
        self._fwd = self._stages(w, forward=True)
        self._inv = self._stages(iw, forward=False)
        self._ninv = np.uint64(pow(n, p - 2, p))
        self._ninv_sh = (self._ninv << _U32) // np.uint64(p)

    def _stages(self, w: np.ndarray, *, forward: bool) -> list[tuple[bool, int, int,
                                                                     np.ndarray, np.ndarray]]:
        """Per stage: (transposed layout?, groups, distance, twiddles, Shoup quotients),
        twiddles shaped to broadcast over the stage's view."""
        p, n, k = np.uint64(self.p), self.n, self._k
        shoup = (w << _U32) // p
        stages: list[tuple[bool, int, int, np.ndarray, np.ndarray]] = []
        dist = n // 2 if forward else 1
        while 1 <= dist < n:
            m = n // (2 * dist)  # butterfly groups; their twiddles are w[m : 2m]
            if dist >= _LOW:
                stages.append((False, m, dist, w[m:2 * m].reshape(m, 1),
                               shoup[m:2 * m].reshape(m, 1)))
            else:  # rows l, l + dist of the (LOW, n / LOW) block; twiddle by column
                g = _LOW // (2 * dist)
                stages.append((True, g, dist,
                               w[m:m + g * k].reshape(k, g).T.reshape(g, 1, k).copy(),
                               shoup[m:m + g * k].reshape(k, g).T.reshape(g, 1, k).copy()))
            dist = dist // 2 if forward else dist * 2
        return stages

    def _view(self, block: np.ndarray, transposed: bool, groups: int, dist: int
              ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
        b = block.shape[0]
        if transposed:
            v = block.reshape(b, groups, 2, dist, self._k)
            return v[:, :, 0], v[:, :, 1], (b, groups, dist, self._k)
        v = block.reshape(b, groups, 2, dist)
        return v[:, :, 0, :], v[:, :, 1, :], (b, groups, dist)

    def forward(self, a: np.ndarray) -> np.ndarray:
        """NTT of each row of ``a`` (count, n), entries < p; a new array, entries < p."""
        return self._run(a, forward=True)

    def inverse(self, a: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`forward` (coefficients < p)."""
        return self._run(a, forward=False)

    def _run(self, a: np.ndarray, *, forward: bool) -> np.ndarray:
        src = np.ascontiguousarray(a, dtype=np.uint64).reshape(-1, self.n)
        out = np.empty_like(src)
        n, k = self.n, self._k
        p, p2 = np.uint64(self.p), np.uint64(2 * self.p)
        block = np.empty((_CHUNK, n), dtype=np.uint64)
        tmp1 = np.empty(_CHUNK * n, dtype=np.uint64)
        tmp2 = np.empty(_CHUNK * n // 2, dtype=np.uint64)
        for start in range(0, src.shape[0], _CHUNK):
            b = min(_CHUNK, src.shape[0] - start)
            dst = out[start:start + b]
            cur = block[:b]
            cur[...] = src[start:start + b]
            transposed = not forward  # the forward output (the inverse's input) is transposed
            for in_t, groups, dist, w, wsh in (self._fwd if forward else self._inv):
                if in_t != transposed:  # switch layouts (once per transform)
                    shape_in, shape_out = ((b, k, _LOW), (b, _LOW, k)) if in_t else \
                        ((b, _LOW, k), (b, k, _LOW))
                    dst.reshape(shape_out)[...] = cur.reshape(shape_in).transpose(0, 2, 1)
                    cur, transposed = dst, in_t
                x, y, shape = self._view(cur, in_t, groups, dist)
                size = int(np.prod(shape))
                t1, t2 = tmp1[:size].reshape(shape), tmp2[:size].reshape(shape)
                if forward:  # Harvey CT: x ← x mod 2p; t = w·y ∈ [0, 2p); (x + t, x − t + 2p)
                    np.subtract(x, p2, out=t2)
                    np.minimum(x, t2, out=x)
                    np.multiply(y, wsh, out=t1)
                    np.right_shift(t1, _U32, out=t1)
                    np.multiply(t1, p, out=t1)
                    np.multiply(y, w, out=t2)
                    np.subtract(t2, t1, out=t2)
                    np.subtract(x, t2, out=y)
                    np.add(y, p2, out=y)
                    np.add(x, t2, out=x)
                else:  # Harvey GS: (x + y mod 2p, w·(x − y + 2p))
                    np.subtract(x, y, out=t2)
                    np.add(t2, p2, out=t2)
                    np.add(x, y, out=x)
                    np.subtract(x, p2, out=t1)
                    np.minimum(x, t1, out=x)
                    np.multiply(t2, wsh, out=t1)
                    np.right_shift(t1, _U32, out=t1)
                    np.multiply(t1, p, out=t1)
                    np.multiply(t2, w, out=y)
                    np.subtract(y, t1, out=y)
            if cur is not dst:
                if transposed:  # the inverse ends in the natural layout
                    dst.reshape(b, k, _LOW)[...] = cur.reshape(b, _LOW, k).transpose(0, 2, 1)
                else:
                    dst[...] = cur
            t = tmp1[:b * n].reshape(b, n)
            if not forward:  # times n^-1 (Shoup), result in [0, 2p)
                np.multiply(dst, self._ninv_sh, out=t)
                np.right_shift(t, _U32, out=t)
                np.multiply(t, p, out=t)
                np.multiply(dst, self._ninv, out=dst)
                np.subtract(dst, t, out=dst)
            else:
                np.subtract(dst, p2, out=t)
                np.minimum(dst, t, out=dst)
            np.subtract(dst, p, out=t)
            np.minimum(dst, t, out=dst)
        return out.reshape(a.shape)
