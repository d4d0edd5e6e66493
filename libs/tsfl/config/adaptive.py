"""Adaptive learning rates (``strategy.lr_schedule``, ``strategy.client_lr``).

Server side, the schedule multiplies the strategy's server learning rate η each
release: cosine (Loshchilov & Hutter, ICLR 2017, eq. 5), step decay, or the loss-trend
rule (η grows while the clients' training loss falls and shrinks when it rises — the
"bold driver" of Battiti 1989, applied to the server step, on blocks of releases so
that the cohort draw is not taken for a trend: :mod:`tsfl.strategies.schedule`). Client
side, each device scales its local learning rate by its data size (``(n_ref / n_k)^p``,
so clients with many records, which take more local steps, do not drift further: the
objective inconsistency of Wang et al., "FedNova", NeurIPS 2020, §3).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tsfl.config.base import PositiveInt, Spec


class LrScheduleSpec(Spec):
    kind: Literal["cosine", "step", "loss_trend"]
    min_factor: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0, description="cosine: η_min / η; loss_trend: the lowest factor (≥ 0.01)")
    max_factor: Annotated[float, Field(ge=1, le=100)] = Field(
        4.0, description="loss_trend: the highest factor")
    horizon: PositiveInt | None = Field(None, description="cosine: releases to decay over "
                                                           "(default: the job's rounds)")
    warmup: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    step_every: PositiveInt = Field(10, description="step: releases between decays")
    gamma: Annotated[float, Field(gt=0, lt=1)] = Field(0.5, description="step: decay factor")
    grow: Annotated[float, Field(ge=1, le=10)] = Field(
        1.1, description="loss_trend: factor when the loss fell")
    shrink: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5, description="loss_trend: factor when the loss rose")
    tolerance: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.01, description="loss_trend: relative change taken as no change")
    window: Annotated[int, Field(ge=1, le=10_000)] = Field(
        5, description="loss_trend: releases per block; the rule compares the mean loss "
                       "of the last block with the block before, once per block (1: "
                       "consecutive releases, only right when every round sees the same data)")
    z: Annotated[float, Field(ge=0, le=10)] = Field(
        2.0, description="loss_trend: a change smaller than z standard errors of the "
                         "difference of the block means (cohort sampling noise) is no change")


class ClientLrSpec(Spec):
    rule: Literal["data_size"] = "data_size"
    reference_examples: PositiveInt = Field(
        100, description="n_ref: a client with this many examples keeps the task's lr")
    power: Annotated[float, Field(ge=0, le=2)] = 0.5
    min_scale: Annotated[float, Field(gt=0, le=1)] = 0.1
    max_scale: Annotated[float, Field(ge=1, le=100)] = 4.0
    levels_per_octave: Annotated[int, Field(ge=1, le=64)] = Field(
        4, description="the scale is rounded to 2^(j/levels): few distinct learning "
                       "rates, so cohorts still train batched")


class FedBuffSpec(Spec):
    """FedBuff (Nguyen et al., AISTATS 2022, Algorithm 1): ``strategy.mode: async``."""

    buffer: PositiveInt = Field(10, le=100_000, description="K: updates per release")
    concurrency: PositiveInt = Field(100, le=1_000_000, description=(
        "devices training at once; a device that finishes pulls the latest model"))
    max_staleness: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        100, description="updates staler than this (releases since their model) are refused")
    weighting: Literal["constant", "polynomial", "hinge"] = Field("polynomial", description=(
        "s(τ): constant 1; polynomial (1 + τ)^−a; hinge 1 for τ ≤ b, else 1/(a(τ − b) + 1)"))
    a: Annotated[float, Field(ge=0, le=10)] = 0.5
    b: Annotated[int, Field(ge=0, le=1_000_000)] = 4
    averaging: Literal["examples", "uniform"] = Field("examples", description=(
        "examples: Σ s(τ_i)·n_i·Δ_i / Σ n_i (FedAvg's weighting, as the synchronous "
        "rounds use); uniform: (1/K) Σ s(τ_i)·Δ_i (FedBuff's Algorithm 1)"))
    releases: PositiveInt | None = Field(None, le=1_000_000, description=(
        "releases to run (default: the job's rounds)"))
    evaluate_every: PositiveInt = Field(1, le=1_000_000)

    @model_validator(mode="after")
    def _check(self) -> FedBuffSpec:
        if self.buffer > self.concurrency:
            raise ValueError(f"strategy.fedbuff.buffer ({self.buffer}) exceeds concurrency "
                             f"({self.concurrency}): a release would wait forever")
        return self
