"""Local differential privacy on the device: clip and noise the update before upload.

The coordinator sends the job's settings with each task (``config["local_dp"]``); the
server never sees an un-noised update. The sensitivity is the diameter of the clipping
ball (2C): any two of the device's possible updates differ by at most that.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tsfl.privacy.clipping import clip
from tsfl.privacy.mechanisms import build_mechanism
from tsfl.privacy.noise import noise_source

#: stream id mixed into the task seed for a simulated device's local noise
LOCAL_NOISE_STREAM = 0x10CA1

_NORMS = {"gaussian": "l2", "laplace": "l1", "staircase": "linf"}


class LocalDpError(ValueError):
    """The task's local-DP settings are unusable (the device refuses to upload)."""


def _positive(cfg: dict[str, Any], key: str) -> float:
    value = cfg.get(key)
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise LocalDpError(f"local_dp.{key} must be a finite number > 0, got {value!r}")
    return float(value)


def apply_local_dp(delta: np.ndarray, cfg: Any, seed: int | None) -> np.ndarray:
    """Clip ``delta`` in place in the mechanism's norm and return it noised (float32)."""
    if not isinstance(cfg, dict):
        raise LocalDpError("local_dp must be a mapping")
    mechanism = cfg.get("mechanism")
    if mechanism not in _NORMS:
        raise LocalDpError(f"unknown local_dp.mechanism {mechanism!r}")
    clip_norm = _positive(cfg, "clip_norm")
    factor = _positive(cfg, "sensitivity_factor")
    clip(delta, clip_norm, _NORMS[mechanism])
    if mechanism == "staircase":
        mech = build_mechanism(mechanism, sensitivity=factor * clip_norm,
                               epsilon=_positive(cfg, "epsilon"))
    else:
        mech = build_mechanism(mechanism, noise_multiplier=_positive(cfg, "noise_multiplier"),
                               sensitivity=factor * clip_norm)
    kind = cfg.get("noise", "secure")
    if kind == "seeded" and seed is None:
        raise LocalDpError("seeded local noise needs the task's seed")
    source = noise_source(kind if kind in ("seeded", "secure") else "secure",
                          [int(seed or 0), LOCAL_NOISE_STREAM])
    return mech.add_noise(delta, source)
