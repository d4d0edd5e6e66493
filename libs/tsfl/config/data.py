"""What a job trains on: the dataset and its split, the client population, the model."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from tsfl.config.base import MAX_CLIENTS, PositiveFloat, PositiveInt, Spec


class PartitionSpec(Spec):
    """How the training set is split across clients (ignored for ``synthetic``)."""

    kind: Literal["iid", "dirichlet", "shards"] = "dirichlet"
    alpha: PositiveFloat = Field(0.5, description="Dirichlet concentration (label skew).")
    shards_per_client: PositiveInt = 2
    min_examples: Annotated[int, Field(ge=1)] = 2


class SyntheticSpec(Spec):
    """Li et al. (FedProx, MLSys 2020) Synthetic(α, β) generator."""

    alpha: Annotated[float, Field(ge=0)] = 1.0
    beta: Annotated[float, Field(ge=0)] = 1.0
    dim: Annotated[int, Field(gt=0, le=100_000)] = 60
    classes: Annotated[int, Field(ge=2, le=10_000)] = 10
    iid: bool = False
    mean_samples: PositiveFloat = Field(4.0, description="log-normal mean of samples/client")
    sigma_samples: Annotated[float, Field(ge=0)] = 2.0
    min_samples: Annotated[int, Field(gt=0, le=1_000_000)] = 50
    max_samples: Annotated[int, Field(gt=0, le=1_000_000)] = 2000


class DataSpec(Spec):
    dataset: Literal["digits", "breast_cancer", "synthetic", "npz", "csv"] = "digits"
    path: str | None = Field(None, description="file for npz/csv datasets")
    label_column: str | None = Field(None, description="csv label column (default: last)")
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    split_seed: Annotated[int, Field(ge=0)] = 0
    partition: PartitionSpec = PartitionSpec()
    synthetic: SyntheticSpec = SyntheticSpec()

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        if self.dataset in ("npz", "csv") and not self.path:
            raise ValueError(f"dataset {self.dataset!r} needs data.path")
        if self.dataset not in ("npz", "csv") and self.path:
            raise ValueError(f"data.path is only for npz/csv, not {self.dataset!r}")
        if self.label_column is not None and self.dataset != "csv":
            raise ValueError("data.label_column is only for csv datasets")
        return self


class ClientsSpec(Spec):
    count: Annotated[int, Field(gt=0, le=MAX_CLIENTS)] = 100
    per_round: Annotated[int, Field(gt=0, le=MAX_CLIENTS)] = 10
    min_enrolled: Annotated[int, Field(gt=0, le=MAX_CLIENTS)] | None = Field(
        None, description="distributed: round 1 starts once this many devices enrolled "
                          "(default: count); devices enrolling later join the population "
                          "each round samples from (up to 2·count + 16)")

    @model_validator(mode="after")
    def _check(self) -> ClientsSpec:
        if self.per_round > self.count:
            raise ValueError(f"per_round ({self.per_round}) exceeds count ({self.count})")
        if self.min_enrolled is not None and not (
                self.per_round <= self.min_enrolled <= self.count):
            raise ValueError(f"min_enrolled ({self.min_enrolled}) must be between per_round "
                             f"({self.per_round}) and count ({self.count})")
        return self

    @property
    def start_at(self) -> int:
        """The enrolled devices round 1 waits for."""
        return self.min_enrolled or self.count


class ModelSpec(Spec):
    kind: Literal["mlp", "cnn", "logreg", "custom"] = "mlp"
    hidden: Annotated[list[Annotated[int, Field(gt=0, le=65_536)]], Field(max_length=64)] = (
        Field(default_factory=lambda: [64, 64]))
    builder: str | None = Field(None, description="kind=custom: a model builder the operator "
                                "installed (entry point group tsfl.models; `tsfl models`)")
    factory: str | None = Field(None, description="kind=custom, tsfl run only: "
                                "'package.module:function' (an import: never on a server)")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    init: Annotated[str, Field(min_length=1, max_length=4096)] | None = Field(
        None, description="warm start: a safetensors file or torch state dict whose tensors "
        "(names, shapes) match the model; a coordinator reads it from its data directory "
        "only")

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if self.init is None:  # a cold start keeps the job's identity (its hash) unchanged
            out.pop("init", None)
        return out

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.kind == "custom":
            if (self.builder is None) == (self.factory is None):
                raise ValueError("model.kind=custom needs model.builder (an installed model "
                                 "builder: `tsfl models`) or, for tsfl run only, "
                                 "model.factory as 'package.module:func'")
            if self.factory is not None and ":" not in self.factory:
                raise ValueError("model.factory must look like 'package.module:func'")
        elif self.factory or self.builder:
            raise ValueError("model.builder and model.factory are only for model.kind=custom")
        return self
