"""Local differential privacy on the device: clip and noise the update before upload.

The coordinator states the job's settings with each task (``config["local_dp"]``); the
device checks them against its owner's floor and ledger
(:class:`~tsfl.sdk.privacy_guard.DevicePrivacy`) and draws the noise from its own
CSPRNG, so the server never sees an un-noised update and cannot regenerate the noise.
The sensitivity is the diameter of the clipping ball (2C): any two of the device's
possible updates differ by at most that.
"""

from __future__ import annotations

import numpy as np

from tsfl.privacy.clipping import clip
from tsfl.privacy.mechanisms import build_mechanism
from tsfl.privacy.noise import NoiseSource
from tsfl.sdk.privacy_guard import LOCAL_SENSITIVITY_FACTOR, LocalDpSettings


def apply_local_dp(delta: np.ndarray, settings: LocalDpSettings,
                   source: NoiseSource) -> np.ndarray:
    """Clip ``delta`` in place in the mechanism's norm and return it noised (float32)."""
    clip(delta, settings.clip_norm, settings.norm)
    mech = build_mechanism(settings.mechanism, noise_multiplier=settings.noise_multiplier,
                           sensitivity=LOCAL_SENSITIVITY_FACTOR * settings.clip_norm,
                           epsilon=settings.epsilon)
    return mech.add_noise(delta, source)
