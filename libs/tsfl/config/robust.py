"""Byzantine robustness: the robust rule, anomaly filters, simulated attacks."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

from tsfl.config.base import PositiveFloat, PositiveInt, Spec

RobustRule = Literal["none", "krum", "multikrum", "bulyan", "median", "trimmed_mean",
                     "norm_bounding", "fltrust", "wfagg"]
AttackKind = Literal["none", "sign_flip", "scaling", "gaussian", "alie", "ipm", "label_flip",
                     "backdoor"]
ROBUST_AGGREGATORS: tuple[str, ...] = get_args(RobustRule)
ATTACKS: tuple[str, ...] = get_args(AttackKind)


class RobustSpec(Spec):
    """Byzantine-robust aggregation (the byzantine stage's rule) and anomaly alerts."""

    aggregator: RobustRule = "none"
    num_malicious: Annotated[int, Field(ge=0)] = Field(
        0, description="f: the Byzantine clients a round is assumed to hold")
    to_keep: PositiveInt | None = Field(None, description="multikrum: updates kept (n − f)")
    beta: Annotated[float, Field(ge=0, lt=0.5)] = Field(0.1, description="trimmed_mean cut")
    max_norm: PositiveFloat | None = Field(None, description="norm_bounding: L2 bound")
    root_examples: PositiveInt = Field(100, description="fltrust: the server's root dataset")
    wfagg: dict[str, float] = Field(default_factory=dict, description=(
        "WFAgg options: threshold, band_k, band_ratio, ema, min_history, smoothing"))
    alert_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        0.1, description="alert when more than this fraction of a round is flagged")
    reputation_threshold: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.3, description="refuse clients whose reputation (EMA of their acceptance) is "
                         "below; 0 disables")
    reputation_ema: Annotated[float, Field(gt=0, le=1)] = 0.4
    min_cosine: Annotated[float, Field(ge=-1, le=1)] | None = Field(
        0.0, description="refuse updates whose cosine to the round's median is below "
                         "(null disables)")
    max_norm_ratio: Annotated[float, Field(gt=1)] | None = Field(
        3.0, description="refuse updates larger than this × the round's median norm "
                         "(null disables)")

    @model_validator(mode="after")
    def _check(self) -> RobustSpec:
        if self.aggregator == "norm_bounding" and self.max_norm is None:
            raise ValueError("norm_bounding needs max_norm")
        unknown = set(self.wfagg) - {"threshold", "band_k", "band_ratio", "ema",
                                     "min_history", "smoothing"}
        if unknown:
            raise ValueError(f"unknown wfagg option(s): {sorted(unknown)}")
        return self


class AttackSpec(Spec):
    """Simulated Byzantine clients (simulation only: real devices are who they are)."""

    kind: AttackKind = "none"
    fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0
    collude: bool = Field(True, description="attackers share their honest updates (ALIE, "
                                            "IPM estimate the benign statistics from them)")
    scale: PositiveFloat = Field(10.0, description="scaling: factor; gaussian: noise std")
    epsilon: PositiveFloat = Field(0.5, description="IPM: −ε × the benign mean")
    z: PositiveFloat | None = Field(None, description="ALIE: std multiplier (default from n, f)")
    target_label: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _check(self) -> AttackSpec:
        if (self.kind == "none") != (self.fraction == 0):
            raise ValueError("attacks.kind and attacks.fraction go together: a kind needs "
                             "a fraction > 0 and a fraction needs a kind")
        return self
