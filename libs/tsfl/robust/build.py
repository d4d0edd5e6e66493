"""The robust aggregator a job spec asks for."""

from __future__ import annotations

import numpy as np

from tsfl.config import RobustSpec
from tsfl.robust.aggregators import (
    Bulyan,
    FLTrust,
    Krum,
    Median,
    MultiKrum,
    NormBounding,
    RobustAggregator,
    TrimmedMean,
)
from tsfl.robust.wfagg import ClientHistory, WFAgg


def build_robust(spec: RobustSpec, history: ClientHistory | None = None,
                 root_update: np.ndarray | None = None) -> RobustAggregator | None:
    """None when the job has no robust rule (updates pass with weight 1). FLTrust needs
    the round's ``root_update``; without it, its rule is returned over a zero direction
    only to tell its kind (the byzantine stage always passes one)."""
    f = spec.num_malicious
    match spec.aggregator:
        case "none":
            return None
        case "krum":
            return Krum(f)
        case "multikrum":
            return MultiKrum(f, spec.to_keep)
        case "bulyan":
            return Bulyan(f)
        case "median":
            return Median()
        case "trimmed_mean":
            return TrimmedMean(spec.beta)
        case "norm_bounding":
            assert spec.max_norm is not None
            return NormBounding(spec.max_norm)
        case "fltrust":
            return FLTrust(root_update if root_update is not None else np.zeros(1))
        case "wfagg":
            opts = dict(spec.wfagg)
            if "min_history" in opts:
                opts["min_history"] = int(opts["min_history"])
            return WFAgg(f, history=history, **opts)  # type: ignore[arg-type]
    raise ValueError(f"unknown robust aggregator {spec.aggregator!r}")
