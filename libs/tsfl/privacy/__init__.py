"""Differential privacy: noise sources, mechanisms, clipping and accounting.

Plain library code: nothing here knows the bus, the database or gRPC. The privacy
pipeline role (:mod:`tsfl.pipeline.privacy`) and the device SDK wire it in. The names
below load their module on first use: the accountant (dp-accounting, scipy) is heavy, and
a service that only draws noise or clips never pays for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tsfl.privacy.accounting import (
        PrivacyAccountant,
        RoundEvent,
        calibrate_noise_multiplier,
    )
    from tsfl.privacy.clipping import AdaptiveClipper, clip, clip_l1, clip_l2, clip_linf
    from tsfl.privacy.mechanisms import (
        GaussianMechanism,
        LaplaceMechanism,
        Mechanism,
        StaircaseMechanism,
        build_mechanism,
    )
    from tsfl.privacy.noise import NoiseSource, SecureNoise, SeededNoise, noise_source

_HOME = {
    **dict.fromkeys(("PrivacyAccountant", "RoundEvent", "calibrate_noise_multiplier"),
                    "accounting"),
    **dict.fromkeys(("AdaptiveClipper", "clip", "clip_l1", "clip_l2", "clip_linf"),
                    "clipping"),
    **dict.fromkeys(("GaussianMechanism", "LaplaceMechanism", "Mechanism",
                     "StaircaseMechanism", "build_mechanism"), "mechanisms"),
    **dict.fromkeys(("NoiseSource", "SecureNoise", "SeededNoise", "noise_source"), "noise"),
}

__all__ = [
    "AdaptiveClipper", "GaussianMechanism", "LaplaceMechanism", "Mechanism", "NoiseSource",
    "PrivacyAccountant", "RoundEvent", "SecureNoise", "SeededNoise", "StaircaseMechanism",
    "build_mechanism", "calibrate_noise_multiplier", "clip", "clip_l1", "clip_l2", "clip_linf",
    "noise_source",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'tsfl.privacy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tsfl.privacy.{home}"), name)
