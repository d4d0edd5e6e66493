"""Value quantizers: per-block uniform (8/4/2 bits) and QSGD, both with stochastic rounding.

Uniform: each block of ``block`` values is mapped onto ``L = 2^b − 1`` equal steps between
its minimum and maximum; a value is rounded up with probability equal to its fractional
position, so the code is unbiased, E[x̂] = x, and |x̂ − x| ≤ (max − min)/L
(stochastic rounding; Gupta et al. 2015, Eq. 3).

QSGD (Alistarh et al. 2017, Eq. 1, with buckets): a block v is sent as ‖v‖₂ and, per
coordinate, sign(vᵢ)·ℓᵢ with ℓᵢ ∈ {0..s}, ℓᵢ = ⌊s·|vᵢ|/‖v‖ + u⌋; the decoder returns
‖v‖·sign(vᵢ)·ℓᵢ/s. Unbiased, |x̂ᵢ − xᵢ| ≤ ‖v‖/s.
"""

from __future__ import annotations

import numpy as np

from tsfl.compress.errors import CodecError

UNIFORM_BITS = {"q8": 8, "q4": 4, "q2": 2}
MAX_QSGD_LEVELS = 127


def _blocks(values: np.ndarray, block: int) -> np.ndarray:
    pad = -values.size % block
    if pad:
        values = np.pad(values, (0, pad), mode="edge")
    return values.reshape(-1, block)


def num_blocks(m: int, block: int) -> int:
    return -(-m // block)


def _pack(codes: np.ndarray, bits: int) -> bytes:
    if bits == 8:
        return codes.tobytes()
    per = 8 // bits
    c = codes.reshape(-1, per)
    out = c[:, 0].copy()
    for j in range(1, per):
        out |= c[:, j] << (bits * j)
    return out.tobytes()


def _unpack(data: bytes | memoryview, bits: int, count: int) -> np.ndarray:
    raw = np.frombuffer(data, np.uint8)
    if bits == 8:
        return raw
    per = 8 // bits
    mask = (1 << bits) - 1
    out = np.empty((raw.size, per), np.uint8)
    for j in range(per):
        out[:, j] = (raw >> (bits * j)) & mask
    return out.reshape(-1)[:count]


def uniform_sizes(m: int, bits: int, block: int) -> tuple[int, int]:
    """(code bytes, scale bytes) of ``m`` values."""
    nb = num_blocks(m, block)
    return nb * block * bits // 8, nb * 8


def quantize_uniform(values: np.ndarray, bits: int, block: int, rng: np.random.Generator
                     ) -> tuple[bytes, bytes, np.ndarray]:
    """(packed codes, per-block (min, max) float32 pairs, the decoded values)."""
    x = _blocks(np.asarray(values, np.float32), block)
    lo = x.min(axis=1)
    hi = x.max(axis=1)
    levels = (1 << bits) - 1
    step = (hi - lo) / np.float32(levels)
    safe = np.where(step > 0, step, np.float32(1))[:, None]
    scaled = (x - lo[:, None]) / safe
    scaled += rng.random(scaled.shape, dtype=np.float32)
    codes = np.clip(np.floor(scaled, out=scaled), 0, levels).astype(np.uint8)
    decoded = (lo[:, None] + codes * step[:, None]).reshape(-1)[: values.size]
    scales = np.stack([lo, hi], axis=1).astype("<f4")
    return _pack(codes.reshape(-1), bits), scales.tobytes(), decoded


def dequantize_uniform(codes: bytes | memoryview, scales: bytes | memoryview, bits: int,
                       block: int, m: int) -> np.ndarray:
    nb = num_blocks(m, block)
    pairs = np.frombuffer(scales, "<f4").reshape(nb, 2)
    lo, hi = pairs[:, 0], pairs[:, 1]
    if not (np.isfinite(pairs).all() and (hi >= lo).all()):
        raise CodecError("scale", "block scales must be finite with max >= min")
    step = (hi - lo) / np.float32((1 << bits) - 1)
    q = _unpack(codes, bits, nb * block).reshape(nb, block)
    out = lo[:, None] + q * step[:, None]
    return out.reshape(-1)[:m].astype(np.float32, copy=False)


def qsgd_sizes(m: int, block: int) -> tuple[int, int]:
    return m, num_blocks(m, block) * 4


def quantize_qsgd(values: np.ndarray, levels: int, block: int, rng: np.random.Generator
                  ) -> tuple[bytes, bytes, np.ndarray]:
    """(int8 signed levels, per-block float32 norms, the decoded values)."""
    m = values.size
    flat = np.zeros(num_blocks(m, block) * block, np.float32)
    flat[:m] = values
    x = flat.reshape(-1, block)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    safe = np.where(norms > 0, norms, np.float32(1))[:, None]
    scaled = np.abs(x) * (np.float32(levels) / safe)
    scaled += rng.random(scaled.shape, dtype=np.float32)
    mag = np.minimum(np.floor(scaled), levels).astype(np.int8)
    signed = np.where(x < 0, -mag, mag).astype(np.int8)
    decoded = (signed * (norms[:, None] / np.float32(levels))).reshape(-1)[:m]
    return signed.reshape(-1)[:m].tobytes(), norms.astype("<f4").tobytes(), decoded


def dequantize_qsgd(codes: bytes | memoryview, norms_bytes: bytes | memoryview, levels: int,
                    block: int, m: int) -> np.ndarray:
    norms = np.frombuffer(norms_bytes, "<f4")
    if not (np.isfinite(norms).all() and (norms >= 0).all()):
        raise CodecError("scale", "QSGD block norms must be finite and >= 0")
    q = np.frombuffer(codes, np.int8)
    if (np.abs(q.astype(np.int16)) > levels).any():
        raise CodecError("levels", f"a QSGD level exceeds s={levels}")
    full = np.zeros(norms.size * block, np.float32)
    full[:m] = q
    out = full.reshape(-1, block) * (norms[:, None] / np.float32(levels))
    return out.reshape(-1)[:m].astype(np.float32, copy=False)
