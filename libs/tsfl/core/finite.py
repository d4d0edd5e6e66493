"""A fast finiteness check for flat vectors (updates, sums)."""

from __future__ import annotations

import numpy as np
from scipy.linalg.blas import sdot


def all_finite(vec: np.ndarray) -> bool:
    """True iff no NaN/Inf: one BLAS dot product, exact check only if it overflows."""
    if vec.size == 0:
        return True
    if np.isfinite(sdot(vec, vec)):
        return True
    return bool(np.isfinite(vec).all())
