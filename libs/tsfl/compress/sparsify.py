"""Which coordinates a sparse update keeps: top-k by magnitude, or k at random.

Top-k finds its threshold on a random sample of |x| (as in Deep Gradient Compression,
Lin et al. 2018, Sec. 3), keeps the candidates above it and selects the exact k among
them: O(n) with a small constant instead of a full partition of |x|.
"""

from __future__ import annotations

import numpy as np

SAMPLE = 20_000
_SLACK = 1.5  # the sample's threshold aims for 1.5 k candidates


def keep_count(n: int, ratio: float) -> int:
    return max(1, min(n, round(n * ratio)))


def top_k(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted int64 indices of the ``k`` largest |x| (ties broken arbitrarily)."""
    n = x.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    mag = np.abs(x)
    if n > 4 * SAMPLE and k * _SLACK < n / 4:
        sample = mag[rng.integers(0, n, SAMPLE)]
        pos = int(SAMPLE * (1 - _SLACK * k / n))
        threshold = np.partition(sample, pos)[pos]
        candidates = np.flatnonzero(mag >= threshold)
        if candidates.size >= k:
            chosen = candidates[np.argpartition(mag[candidates], candidates.size - k)[-k:]]
            chosen.sort()
            return chosen.astype(np.int64, copy=False)
    chosen = np.argpartition(mag, n - k)[-k:]
    chosen.sort()
    return chosen.astype(np.int64, copy=False)


def random_k(n: int, k: int, seed: int) -> np.ndarray:
    """Sorted indices of ``k`` coordinates drawn without replacement from ``seed``.

    Sender and receiver derive the same set from the seed, so no index is sent.
    """
    chosen = np.random.default_rng(seed).choice(n, size=k, replace=False, shuffle=False)
    chosen.sort()
    return chosen.astype(np.int64, copy=False)
