"""The robust aggregator a job spec asks for."""

from __future__ import annotations

from collections.abc import Callable

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

#: rules whose aggregate is a coordinate-wise estimator over the kept updates
COORDINATE_RULES = frozenset({"median", "trimmed_mean", "bulyan"})


def coordinate_estimator(spec: RobustSpec) -> Callable[[np.ndarray], np.ndarray] | None:
    """The estimator the aggregator evaluates at close for a coordinate-wise rule."""
    if spec.aggregator not in COORDINATE_RULES:
        return None
    rule = build_robust(spec)
    assert rule is not None
    return rule.coordinate_estimate


def build_robust(spec: RobustSpec, history: ClientHistory | None = None,
                 root_update: np.ndarray | None = None) -> RobustAggregator | None:
    """None when the job has no robust rule (updates pass with weight 1). FLTrust needs
    the round's ``root_update`` (the server's update on its root dataset)."""
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
            if root_update is None:
                raise ValueError("fltrust needs the round's root update")
            return FLTrust(root_update)
        case "wfagg":
            opts = dict(spec.wfagg)
            if "min_history" in opts:
                opts["min_history"] = int(opts["min_history"])
            return WFAgg(f, history=history, **opts)  # type: ignore[arg-type]
    raise ValueError(f"unknown robust aggregator {spec.aggregator!r}")
