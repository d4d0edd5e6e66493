"""Differential privacy: the mechanism, clipping, noise calibration and accounting."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from tsfl.config.base import PositiveFloat, Spec


class AdaptiveClippingSpec(Spec):
    """Andrew et al. (2021) quantile-tracking clip norm; ``clip_norm`` is its start."""

    target_quantile: Annotated[float, Field(gt=0, lt=1)] = 0.5
    learning_rate: PositiveFloat = 0.2
    count_stddev: PositiveFloat | None = Field(
        None, description="σ_b of the noised clipped count (default: expected cohort / 20)")


class PrivacySpec(Spec):
    """Differential privacy. ``mode: central`` clips on the server and noises the
    aggregate; ``local`` clips and noises on each device before upload."""

    mode: Literal["none", "central", "local"] = "none"
    mechanism: Literal["gaussian", "laplace", "staircase"] = "gaussian"
    clip_norm: PositiveFloat | None = Field(None, description="L2 (gaussian), L1 (laplace) "
                                            "or per-coordinate (staircase) bound")
    adaptive_clipping: AdaptiveClippingSpec | None = None
    noise_multiplier: PositiveFloat | None = Field(
        None, description="noise std (or Laplace scale) / sensitivity; calibrated from "
                          "target_epsilon over all rounds when omitted")
    epsilon_per_round: PositiveFloat | None = Field(
        None, description="the staircase's per-coordinate ε for each round")
    target_epsilon: PositiveFloat | None = Field(None, description="the budget; the job "
                                                 "stops with BUDGET_EXHAUSTED before exceeding it")
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    sampling: Literal["poisson", "fixed"] = "poisson"
    noise: Literal["seeded", "secure"] = Field(
        "secure", description="secure: a CSPRNG (noise, cohorts, device sampling); seeded: "
                              "reproducible simulation, not private (tsfl run only)")
    accounting_interval: Annotated[float, Field(ge=1e-6, le=1e-2)] = Field(
        1e-3, description="the PLD accountant's loss discretization: a pessimistic grid "
                          "(ε is an upper bound); 1e-4 is dp-accounting's default, ~20× "
                          "slower per round for a difference below 1e-4 relative")

    @model_validator(mode="before")
    @classmethod
    def _ranges(cls, data: Any) -> Any:
        # Say what a privacy reviewer would, not pydantic's generic bound messages.
        if isinstance(data, dict):
            d, e = data.get("delta"), data.get("target_epsilon")
            if isinstance(d, int | float) and not 0 < d < 1:
                raise ValueError(f"delta must be in (0, 1), got {d}: a δ ≥ 1 "
                                 "promises nothing")
            if isinstance(e, int | float) and e <= 0:
                raise ValueError(f"target_epsilon must be > 0, got {e}")
        return data

    @model_validator(mode="after")
    def _check(self) -> PrivacySpec:
        if self.mode == "none":
            given = [k for k in ("clip_norm", "noise_multiplier", "target_epsilon",
                                 "adaptive_clipping", "epsilon_per_round")
                     if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{given[0]} is set but mode is 'none'")
            return self
        if self.clip_norm is None:
            raise ValueError("noise without clipping bounds nothing: clip_norm is "
                             f"required with mode {self.mode!r}")
        if self.mechanism == "staircase":
            if self.epsilon_per_round is None:
                raise ValueError("the staircase mechanism needs epsilon_per_round")
            if self.noise_multiplier is not None:
                raise ValueError("noise_multiplier does not apply to the staircase "
                                 "(it is set by epsilon_per_round)")
        else:
            if self.epsilon_per_round is not None:
                raise ValueError("epsilon_per_round is only for the staircase")
            if self.noise_multiplier is None and self.target_epsilon is None:
                raise ValueError("DP needs noise_multiplier or target_epsilon (to "
                                 "calibrate the noise)")
        if self.adaptive_clipping is not None and (self.mode != "central"
                                                   or self.mechanism != "gaussian"):
            raise ValueError("adaptive clipping is for central DP with the gaussian "
                                 "mechanism")
        if self.mode == "central" and self.sampling == "fixed" and self.mechanism != "gaussian":
            raise ValueError(f"fixed-size sampling is accounted for the gaussian mechanism "
                             f"only (RDP, replace-one); use sampling: poisson with "
                             f"{self.mechanism}")
        return self
