"""How clients train and the server steps: local training, the server strategy, round
rules, evaluation, simulation settings."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictInt, field_validator, model_validator

from tsfl.config.adaptive import ClientLrSpec, FedBuffSpec, LrScheduleSpec
from tsfl.config.base import Fraction, PositiveFloat, PositiveInt, Spec
from tsfl.config.clock import ClockSpec
from tsfl.plugins import STRATEGY_GROUP, known_name


class DpSgdSpec(Spec):
    """Record-level DP-SGD in each client's local training (Abadi et al., CCS 2016)."""

    noise_multiplier: PositiveFloat = Field(description="noise std / max_grad_norm")
    max_grad_norm: PositiveFloat = Field(description="per-record gradient L2 bound")
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    noise: Literal["seeded", "secure"] = Field(
        "secure", description="secure: each device's CSPRNG draws its noise and batches; "
                              "seeded: reproducible simulation, not private (tsfl run only)")


class TrainingSpec(Spec):
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    epochs: PositiveInt = 1
    batch_size: PositiveInt = 16
    dp_sgd: DpSgdSpec | None = Field(None, description="record-level DP-SGD on every client")


_STRATEGY_OPTIONS: dict[str, set[str]] = {
    "fedavg": {"server_lr"},
    "fedprox": {"server_lr", "mu"},
    "fedavgm": {"server_lr", "momentum"},
    "fedadam": {"server_lr", "beta1", "beta2", "tau", "bias_correction"},
    "fedyogi": {"server_lr", "beta1", "beta2", "tau", "bias_correction"},
    "fedadagrad": {"server_lr", "beta1", "tau", "bias_correction"},
}


#: StrategySpec fields that are not the named strategy's constructor options
_NOT_OPTIONS = {"name", "mode", "fedbuff", "lr_schedule", "client_lr", "options"}

#: a plugin strategy's options: scalars only, a few of them
PluginOption = (StrictBool | StrictInt | Annotated[float, Field(allow_inf_nan=False)]
                | Annotated[str, Field(max_length=256)])


class StrategySpec(Spec):
    name: str = Field("fedavg", max_length=64, description=(
        "fedavg, fedavgm, fedprox, fedadam, fedyogi, fedadagrad, or a strategy the "
        "operator installed (entry-point group tsfl.strategies: docs/extending.md)"))
    options: dict[Annotated[str, Field(max_length=64)], PluginOption] | None = Field(
        None, max_length=32, description="an installed strategy's constructor options")
    server_lr: PositiveFloat | None = None
    momentum: Annotated[float, Field(ge=0, lt=1)] | None = None
    mu: Annotated[float, Field(ge=0)] | None = None
    beta1: Annotated[float, Field(ge=0, lt=1)] | None = None
    beta2: Annotated[float, Field(ge=0, lt=1)] | None = None
    tau: PositiveFloat | None = None
    bias_correction: bool | None = None
    mode: Literal["sync", "async"] = Field("sync", description=(
        "async: FedBuff (strategy.fedbuff); embedded on the virtual clock, distributed "
        "on real devices"))
    fedbuff: FedBuffSpec = FedBuffSpec()
    lr_schedule: LrScheduleSpec | None = Field(None, description="server η schedule")
    client_lr: ClientLrSpec | None = Field(None, description="client lr by data size")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return known_name(STRATEGY_GROUP, name, sorted(_STRATEGY_OPTIONS), "strategy")

    @model_validator(mode="after")
    def _check(self) -> StrategySpec:
        given = {k for k in type(self).model_fields
                 if k not in _NOT_OPTIONS and getattr(self, k) is not None}
        if self.name not in _STRATEGY_OPTIONS:
            if given:
                raise ValueError(f"strategy {self.name!r} is installed: its settings go in "
                                 f"strategy.options, not {', '.join(sorted(given))}")
            return self
        if self.options is not None:
            raise ValueError(f"strategy.options is for installed strategies; {self.name!r} "
                             "takes its settings as strategy fields")
        wrong = sorted(given - _STRATEGY_OPTIONS[self.name])
        if wrong:
            raise ValueError(f"option(s) {', '.join(wrong)} do not apply to strategy {self.name!r}")
        return self

    @property
    def is_installed(self) -> bool:
        """Whether ``name`` is an operator-installed strategy (not a built-in one)."""
        return self.name not in _STRATEGY_OPTIONS

    def params(self) -> dict[str, Any]:
        if self.is_installed:
            return dict(self.options or {})
        return {
            k: getattr(self, k)
            for k in type(self).model_fields
            if k not in _NOT_OPTIONS and getattr(self, k) is not None
        }


class RoundSpec(Spec):
    quorum: Fraction = Field(1.0, description="fraction of the cohort that closes a round early")
    min_updates: PositiveInt = 1
    deadline_s: PositiveFloat = 600.0
    max_update_norm: PositiveFloat | None = Field(
        None, description="refuse updates with a larger L2 norm (default: norm_bound_factor "
                          "× the previous round's median, and never above 1e4·√parameters)")
    norm_bound_factor: Annotated[float, Field(gt=1)] = 100.0


class EvaluationSpec(Spec):
    every: PositiveInt = 1
    batch_size: PositiveInt = 1024
    server: bool = Field(True, description=(
        "distributed deployment: the coordinator evaluates each released model on the "
        "dataset's held-out split (built-in datasets, or files in its data directory)"))
    federated: Literal["auto", "on", "off"] = Field("auto", description=(
        "devices evaluate each model they are sent on their own data and report it "
        "(fed_* round metrics); auto: when the coordinator cannot evaluate itself and the "
        "job has neither DP nor crypto (per-device metrics are protected by neither)"))


class NetworkSpec(Spec):
    """Simulated device links: per-device bandwidth ~ log-normal, a fixed latency."""

    bandwidth_mbps: PositiveFloat = Field(8.0, description="median uplink bandwidth, Mbit/s")
    bandwidth_sigma: Annotated[float, Field(ge=0, le=3)] = Field(
        1.0, description="log-normal sigma of the per-device bandwidth")
    latency_ms: Annotated[float, Field(ge=0)] = 50.0


class SimulationSpec(Spec):
    torch_threads: Annotated[int, Field(gt=0, le=256)] = 1
    dropout: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="fraction of each round's cohort that vanishes mid-round (seeded; "
                         "with secagg at a random protocol stage)")
    network: NetworkSpec | None = Field(None, description=(
        "simulate link speeds: transfers are timed as bytes / bandwidth + latency (no "
        "sleeping), which feeds the per-device bandwidth estimates of adaptive compression"))
    batched: Literal["auto", "off"] = Field("auto", exclude=True, description=(
        "auto: train each round's cohort in one vectorised call where the model and "
        "training allow it (same results as one client at a time); off: one at a time. "
        "Not part of the job's identity (its hash and id): it changes no result"))
    clock: ClockSpec | None = Field(None, description=(
        "the virtual clock: per-device speeds and availability; rounds report simulated "
        "seconds (sim_time_s) and deadline, quorum and over-selection use them"))
