"""Differential privacy: noise sources, mechanisms, clipping and accounting.

Plain library code: nothing here knows the bus, the database or gRPC. The privacy
pipeline role (:mod:`tsfl.pipeline.privacy`) and the device SDK wire it in.
"""

from tsfl.privacy.accounting import PrivacyAccountant, RoundEvent, calibrate_noise_multiplier
from tsfl.privacy.clipping import AdaptiveClipper, clip, clip_l1, clip_l2, clip_linf
from tsfl.privacy.mechanisms import (
    GaussianMechanism,
    LaplaceMechanism,
    Mechanism,
    StaircaseMechanism,
    build_mechanism,
)
from tsfl.privacy.noise import NoiseSource, SecureNoise, SeededNoise, noise_source

__all__ = [
    "AdaptiveClipper", "GaussianMechanism", "LaplaceMechanism", "Mechanism", "NoiseSource",
    "PrivacyAccountant", "RoundEvent", "SecureNoise", "SeededNoise", "StaircaseMechanism",
    "build_mechanism", "calibrate_noise_multiplier", "clip", "clip_l1", "clip_l2", "clip_linf",
    "noise_source",
]
