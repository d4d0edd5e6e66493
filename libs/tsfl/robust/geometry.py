"""Distances between updates, from one Gram matrix.

For n updates of d parameters stacked as X (n × d), ‖xᵢ − xⱼ‖² = Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ with
G = X Xᵀ: one BLAS matrix product (O(n²d), multithreaded, no Python loop) instead of n²
vector subtractions. Accumulated in float64, so cancellation in the subtraction stays
far below the distances that matter.
"""

from __future__ import annotations

import numpy as np


def stack(updates: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """The updates as one (n × d) matrix (a matrix passes through uncopied)."""
    if isinstance(updates, np.ndarray):
        if updates.ndim != 2:
            raise ValueError(f"updates must be an n × d matrix, got shape {updates.shape}")
        return updates
    if not updates:
        raise ValueError("no updates")
    return np.stack([np.asarray(u).ravel() for u in updates])


def gram(x: np.ndarray) -> np.ndarray:
    """X Xᵀ in float64."""
    x64 = x.astype(np.float64, copy=False)
    return x64 @ x64.T


def pairwise_sq_distances(x: np.ndarray, g: np.ndarray | None = None) -> np.ndarray:
    """‖xᵢ − xⱼ‖² for all pairs (n × n, zero diagonal, clipped at 0)."""
    g = gram(x) if g is None else g
    sq = np.diag(g)
    d = sq[:, None] + sq[None, :] - 2.0 * g
    np.maximum(d, 0.0, out=d)
    np.fill_diagonal(d, 0.0)
    return d


def norms(x: np.ndarray, g: np.ndarray | None = None) -> np.ndarray:
    if g is not None:
        return np.sqrt(np.maximum(np.diag(g), 0.0))
    return np.linalg.norm(x.astype(np.float64, copy=False), axis=1)


def distances_to(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """‖xᵢ − ref‖₂ for each row."""
    diff = x.astype(np.float64, copy=False) - ref.astype(np.float64, copy=False)[None, :]
    return np.linalg.norm(diff, axis=1)


def cosine_distances_to(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """1 − cos(xᵢ, ref) for each row (1 where either is zero: no direction to agree on)."""
    x64 = x.astype(np.float64, copy=False)
    r64 = ref.astype(np.float64, copy=False)
    denom = np.linalg.norm(x64, axis=1) * np.linalg.norm(r64)
    dots = x64 @ r64
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(denom > 0, dots / np.where(denom > 0, denom, 1.0), 0.0)
    return 1.0 - np.clip(cos, -1.0, 1.0)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(cosine_distances_to(a[None, :], b)[0])
