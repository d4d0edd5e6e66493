"""What a coordinator admits: a submitted job spec is data — bounded, confined, checked
before anything is built or stored.

Adversary: any network peer that can call ``SubmitJob`` (and, until it is authenticated,
anyone). A spec can name no code (``model.factory`` import paths are refused: custom
models are builders the operator installed, :func:`tsfl.sim.models.model_builders`), read
no file outside the operator's data directory (``data.path`` is resolved, links followed,
and must stay inside it; errors never echo a file's content), and cost bounded memory
and time: the YAML is bounded before it is parsed (:mod:`tsfl.spec_yaml`), the fields are
bounded by the spec's types, and the model's parameter count is measured on torch's
``meta`` device (no memory) before a single weight is allocated. Built-in datasets give
their shape without being loaded: the coordinator never touches simulation data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tsfl.config import ConfigError, JobSpec
from tsfl.core.layout import ParamLayout
from tsfl.errors import ErrorKind, TsflError
from tsfl.interop.checkpoints import warm_start
from tsfl.sim.datasets import DatasetError, load_dataset
from tsfl.sim.models import ModelError, build_model
from tsfl.training.flat import FlatModule

#: shapes of the built-in datasets, known without loading them
BUILTIN_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((1, 8, 8), 10),
    "breast_cancer": ((30,), 2),
}


@dataclass(frozen=True)
class AdmissionPolicy:
    """The operator's bounds for submitted jobs."""

    data_dir: Path | None = None  # npz/csv files are read from here only
    max_parameters: int = 1 << 29  # 2 GiB of float32
    max_data_bytes: int = 1 << 30
    max_running_jobs: int = 100  # jobs RUNNING at once on this coordinator
    max_jobs_per_owner: int = 20  # of which one submitter may own

    def __post_init__(self) -> None:
        if min(self.max_parameters, self.max_data_bytes, self.max_running_jobs,
               self.max_jobs_per_owner) < 1:
            raise ValueError("admission bounds must be positive")


class QuotaExceeded(TsflError, RuntimeError):
    """A submission past the coordinator's or the submitter's share of running jobs."""

    kind = ErrorKind.EXHAUSTED


def check_quota(policy: AdmissionPolicy, running_owners: list[str | None],
                owner: str | None) -> None:
    """Refuse a new job when ``max_running_jobs`` run already, or ``owner`` runs
    ``max_jobs_per_owner`` (``running_owners``: the owner of each RUNNING job)."""
    if len(running_owners) >= policy.max_running_jobs:
        raise QuotaExceeded(f"{len(running_owners)} jobs are running, the coordinator's "
                            f"limit is {policy.max_running_jobs}: wait for one to end")
    mine = sum(1 for o in running_owners if o == owner)
    if owner is not None and mine >= policy.max_jobs_per_owner:
        raise QuotaExceeded(f"{owner} runs {mine} jobs, the limit per submitter is "
                            f"{policy.max_jobs_per_owner}: cancel or wait for one")


def refuse_seeded_privacy(spec: JobSpec) -> None:
    """A deployment never runs DP on server-predictable randomness: ``noise: seeded``
    exists for reproducible simulation (``tsfl run``) only."""
    keys = spec.seeded_privacy
    if keys:
        raise ConfigError([f"{k}: 'seeded' is reproducible simulation noise that anyone "
                           "with the job seed can regenerate and subtract; a deployment "
                           "uses 'secure' (the default)" for k in keys])


def refuse_simulated_selection(spec: JobSpec) -> None:
    """The selector service draws uniformly: the other policies (and over-selection) need
    a device book — speeds, availability, losses — that only the simulation keeps today.
    Refused rather than silently drawn uniformly."""
    sel = spec.selection
    if sel.kind != "uniform" or sel.over_selection > 0:
        what = (f"selection.kind {sel.kind!r}" if sel.kind != "uniform"
                else f"selection.over_selection {sel.over_selection}")
        raise ConfigError([f"{what}: the selector service draws cohorts uniformly; this "
                           "policy runs in the embedded simulation (tsfl run) only"])


def confine(path: str, policy: AdmissionPolicy, field: str = "data.path") -> Path:
    """``path`` resolved inside the operator's data directory (links followed: a link out
    of it is refused), as an existing regular file within the size bound; errors name
    ``field`` (``data.path``, ``model.init``)."""
    if policy.data_dir is None:
        raise ConfigError([f"{field}: this coordinator reads no data files (start it with "
                           "--data-dir DIR to serve npz/csv datasets and checkpoints from "
                           "DIR)"])
    root = Path(policy.data_dir).resolve(strict=True)
    resolved = (root / path).resolve(strict=False)
    if not resolved.is_relative_to(root):
        raise ConfigError([f"{field}: outside the coordinator's data directory"])
    if not resolved.is_file():
        raise ConfigError([f"{field}: no such file in the coordinator's data directory"])
    if os.stat(resolved).st_size > policy.max_data_bytes:
        raise ConfigError([f"{field}: larger than {policy.max_data_bytes} bytes"])
    return resolved


def data_shape(spec: JobSpec, policy: AdmissionPolicy
               ) -> tuple[JobSpec, tuple[int, ...], int]:
    """(the spec with its data path confined, input shape, classes)."""
    d = spec.data
    if d.dataset in BUILTIN_SHAPES:
        shape, classes = BUILTIN_SHAPES[d.dataset]
        return spec, shape, classes
    if d.dataset == "synthetic":
        return spec, (d.synthetic.dim,), d.synthetic.classes
    assert d.path is not None
    path = confine(d.path, policy)
    spec = spec.model_copy(update={"data": d.model_copy(update={"path": str(path)})})
    try:
        data = load_dataset(spec.data, spec.clients.count)
    except (DatasetError, ValueError) as exc:
        raise ConfigError([f"data: {exc}"]) from None
    return spec, data.input_shape, data.num_classes


def parameter_count(spec: JobSpec, shape: tuple[int, ...], classes: int) -> int:
    """The model's parameter count, measured on the ``meta`` device (nothing allocated)."""
    with torch.device("meta"):
        model = build_model(spec.model, shape, classes, spec.seed, allow_import=False)
    return sum(p.numel() for p in model.parameters())


def admit(spec: JobSpec, policy: AdmissionPolicy
          ) -> tuple[JobSpec, ParamLayout, np.ndarray]:
    """Check ``spec`` against the policy and build its initial model; raises
    :class:`ConfigError` naming the field. Blocking: run it in a worker thread."""
    refuse_seeded_privacy(spec)
    refuse_simulated_selection(spec)
    if spec.vertical is not None:
        raise ConfigError(["vertical: a vertical job has no horizontal model; admit it with "
                           "admit_vertical"])
    if spec.model.factory is not None:
        raise ConfigError(["model.factory: an import path, which a coordinator never "
                           "follows; name an installed model builder (model.builder; "
                           "`tsfl models` lists them)"])
    spec, shape, classes = data_shape(spec, policy)
    try:
        count = parameter_count(spec, shape, classes)
        if count > policy.max_parameters:
            raise ConfigError([f"model: {count:,} parameters, above this coordinator's "
                               f"bound of {policy.max_parameters:,}"])
        flat = FlatModule(build_model(spec.model, shape, classes, spec.seed,
                                      allow_import=False))
    except ModelError as exc:
        raise ConfigError([f"model: {exc}"]) from None
    initial = flat.vector.copy()
    if spec.model.init is not None:  # warm start: a checkpoint from the data directory only
        path = confine(spec.model.init, policy, "model.init")
        spec = spec.model_copy(update={"model": spec.model.model_copy(
            update={"init": str(path)})})
        initial = warm_start(path, flat.layout, policy.max_data_bytes)
    return spec, flat.layout, initial


def admit_vertical(spec: JobSpec, policy: AdmissionPolicy) -> tuple[JobSpec, int]:
    """Check a ``vertical:`` spec for a coordinator that relays its parties: (the spec
    with ``data.path`` confined, the number of classes). The coordinator holds no model
    and no party's data; the data section only says what the columns are, and is
    confined like a horizontal job's. Blocking: run it in a worker thread."""
    v = spec.vertical
    assert v is not None
    refuse_seeded_privacy(spec)
    if v.psi.mode != "intersection":
        raise ConfigError(["vertical.psi.mode: the distributed deployment trains on the "
                           "intersection; run a cardinality-only PSI with `tsfl psi`"])
    spec, shape, classes = data_shape(spec, policy)
    width = int(np.prod(shape))
    for p in v.parties:
        beyond = [c for c in p.indices if c >= width]
        if beyond:
            raise ConfigError([f"vertical.parties {p.name}: columns {beyond[:5]} beyond the "
                               f"dataset's {width}"])
    return spec, classes
