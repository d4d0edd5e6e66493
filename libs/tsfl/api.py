"""The Python API: run a job embedded and get objects back.

    import tsfl
    result = tsfl.run("digits-dp", rounds=5, training={"lr": 0.1})
    result.final_accuracy, result.metrics[-1], result.state_dict()["fc.weight"]

``tsfl.run`` is ``tsfl run`` without the terminal: the same embedded deployment, the same
outputs in ``out_dir`` (metrics.json, summary.json, curves.png, the SQLite database).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tsfl.config import JobSpec, load_job, parse_job


@dataclass(frozen=True)
class RunResult:
    """What a run produced. ``metrics``: one dict per round (accuracy, loss, bytes, ε, ...);
    ``summary``: summary.json's content; ``final_vector``: the released model as one flat
    float32 vector in the job's layout (:meth:`state_dict` gives named tensors)."""

    job_id: str
    status: str
    reason: str | None
    spec: JobSpec
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    final_vector: np.ndarray
    out_dir: Path
    layout: Any  # tsfl.core.layout.ParamLayout

    @property
    def final_accuracy(self) -> float | None:
        return self.summary.get("final_test_accuracy")

    @property
    def epsilon(self) -> float | None:
        privacy = self.summary.get("privacy") or {}
        return privacy.get("epsilon")

    def state_dict(self) -> dict[str, Any]:
        """The released model as named torch tensors (load it with
        ``model.load_state_dict``)."""
        import torch

        return {name: torch.from_numpy(t)
                for name, t in self.layout.unflatten(self.final_vector).items()}


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_spec(job: JobSpec | str | Path | Mapping[str, Any],
                 overrides: Mapping[str, Any]) -> JobSpec:
    """A validated spec from a spec, a file, a bundled example's name or a mapping, with
    ``overrides`` merged in (nested mappings merge key by key)."""
    if isinstance(job, JobSpec) and not overrides:
        return job
    if isinstance(job, Mapping):
        data = dict(job)
    else:
        spec = job if isinstance(job, JobSpec) else load_job(job)
        data = spec.model_dump(mode="json", exclude_none=True)
    return parse_job(_merge(data, overrides))


def run(job: JobSpec | str | Path | Mapping[str, Any], *, out_dir: str | Path | None = None,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        **overrides: Any) -> RunResult:
    """Run ``job`` embedded (in this process) to completion.

    ``job``: a :class:`JobSpec`, a YAML path, a bundled example's name (``"digits-dp"``) or
    a mapping; ``overrides`` replace spec keys (``rounds=3``, ``privacy={"mode": ...}``);
    ``out_dir``: where outputs go (default: a new temporary directory); ``on_round`` is
    called with each round's metrics as it ends. Raises :class:`tsfl.config.ConfigError`
    for a spec it cannot run."""
    from tsfl.runtime.embedded import run_embedded
    from tsfl.runtime.report import summarize, write_outputs
    from tsfl.runtime.simulation import build_federation

    spec = resolve_spec(job, overrides)
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="tsfl-"))
    federation = build_federation(spec) if spec.vertical is None else None  # vertical: none
    result = asyncio.run(run_embedded(spec, out, on_round=on_round, federation=federation))
    summary = summarize(result.spec, result.metrics, wall_s=result.wall_s,
                        job_id=result.job_id, status=result.status, reason=result.reason,
                        ledger=result.ledger, robustness=result.robustness,
                        crypto=result.crypto)
    if result.vertical is not None:
        summary["vertical"] = result.vertical
    write_outputs(out, result.spec, result.metrics, summary)
    return RunResult(result.job_id, result.status, result.reason, result.spec,
                     result.metrics, summary, result.final_vector, out,
                     federation.workspace.layout if federation else None)
