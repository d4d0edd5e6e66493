"""Federated evaluation: devices evaluate the model they were sent on their own held-out
data and report (loss, examples, metrics); the coordinator keeps an example-weighted mean
per released model version.

It is how a distributed job reports model quality when the coordinator cannot evaluate
itself (``evaluation.server: false``, a dataset it cannot load) — or alongside, with
``evaluation.federated: on``. A device evaluates the released model it downloaded for
its training task (version v, released by round r), before training: no extra round trip,
and round r's metrics gain ``fed_loss``, ``fed_accuracy`` (when devices report
``accuracy``), ``fed_examples`` and ``fed_devices`` once the next model is released.

Adversary: devices that lie. A report is taken only from a device of the current cohort,
once per model version, with values in ±:data:`MAX_VALUE`, at most :data:`MAX_METRICS`
metrics named ``[A-Za-z0-9_.-]`` (``loss``, ``examples``, ``devices`` reserved) and
accuracy in [0, 1]. One device's weight is capped at ``WEIGHT_CAP × the median reported
example count`` (a claim of 10⁷ examples cannot set the mean alone), and from
:data:`ROBUST_FROM` reports on, each value is clipped to the reports' Tukey fences
(Q1 − 1.5·IQR, Q3 + 1.5·IQR) before the weighted mean: a minority of liars moves a
metric no further than the honest reports' spread. With fewer reports, one liar can set
it: the result is labelled ``fed_`` (device-reported), never mixed with the server's
``test_*`` metrics. Per-device metrics are not protected by DP or by
SecAgg/HE, so jobs with either refuse federated evaluation (:mod:`tsfl.config.job`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tsfl.errors import TsflError

#: the most metrics one report may carry, and the longest metric name
MAX_METRICS = 8
MAX_NAME = 64
#: the most examples a report may claim
MAX_EXAMPLES = 10_000_000
#: a report weighs at most this × the median reported example count
WEIGHT_CAP = 10.0
#: the largest |loss| or |metric| a report may carry
MAX_VALUE = 1e6
#: from this many reports on, values are clipped to their Tukey fences
ROBUST_FROM = 4
#: names a device's metric may not take (they would shadow the summary's own)
RESERVED = frozenset({"loss", "examples", "devices"})
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class EvaluationRefused(TsflError, ValueError):
    """A report this coordinator does not take; ``code`` says why (``invalid``: the
    report is malformed; ``not_requested``, ``not_in_cohort``: not now)."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def check_report(loss: float, num_examples: int, metrics: dict[str, float]) -> None:
    """Raise :class:`EvaluationRefused` for a malformed report."""
    if not 0 < num_examples <= MAX_EXAMPLES:
        raise EvaluationRefused("invalid", f"num_examples must be in 1..{MAX_EXAMPLES}")
    if len(metrics) > MAX_METRICS or not all(_NAME.match(k) for k in metrics):
        raise EvaluationRefused("invalid", f"at most {MAX_METRICS} metrics, names of 1.."
                                           f"{MAX_NAME} characters [A-Za-z0-9_.-]")
    if RESERVED & set(metrics):
        raise EvaluationRefused("invalid", f"metric names {sorted(RESERVED)} are reserved")
    values = (loss, *metrics.values())
    if not all(math.isfinite(v) and abs(v) <= MAX_VALUE for v in values) or loss < 0:
        raise EvaluationRefused("invalid", f"loss and metrics must be finite, within "
                                           f"±{MAX_VALUE:g}, loss ≥ 0")
    accuracy = metrics.get("accuracy")
    if accuracy is not None and not 0 <= accuracy <= 1:
        raise EvaluationRefused("invalid", "accuracy must be in [0, 1]")


@dataclass
class VersionEvaluation:
    """The reports on one released model version."""

    version: int
    reports: dict[str, tuple[int, float, dict[str, float]]] = field(default_factory=dict)

    def add(self, device: str, loss: float, num_examples: int,
            metrics: dict[str, float]) -> bool:
        """Take a checked report; False for the device's second report (ignored)."""
        if device in self.reports:
            return False
        self.reports[device] = (int(num_examples), float(loss), dict(metrics))
        return True

    def summary(self) -> dict[str, Any]:
        """The robust, capped example-weighted means: ``fed_loss``, ``fed_<metric>`` for
        each metric at least half the reports carry, ``fed_examples`` (the capped counts'
        sum), ``fed_devices``; {} without reports."""
        if not self.reports:
            return {}
        reports = list(self.reports.values())
        counts = np.array([r[0] for r in reports], dtype=np.float64)
        weights = np.minimum(counts, WEIGHT_CAP * float(np.median(counts)))
        out: dict[str, Any] = {
            "fed_loss": _robust_mean(np.array([r[1] for r in reports]), weights),
            "fed_examples": int(weights.sum()), "fed_devices": len(reports)}
        names = sorted({k for r in reports for k in r[2]})
        for name in names:
            carriers = [i for i, r in enumerate(reports) if name in r[2]]
            if 2 * len(carriers) >= len(reports):
                values = np.array([reports[i][2][name] for i in carriers])
                out[f"fed_{name}"] = _robust_mean(values, weights[carriers])
        return out


def _robust_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """The weighted mean of ``values`` clipped to their Tukey fences (from
    :data:`ROBUST_FROM` values on; Tukey, Exploratory Data Analysis, 1977)."""
    if len(values) >= ROBUST_FROM:
        q1, q3 = np.percentile(values, [25, 75])
        values = np.clip(values, q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1))
    return float(weights @ values / weights.sum())
