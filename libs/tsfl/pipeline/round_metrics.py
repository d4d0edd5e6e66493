"""What the stages tell operators about each round (the instruments of tsfl.metrics).

Recording only: no decision depends on it, and with no meter provider installed every
call is a no-op. Labels: the job id and small enums, never a device id.
"""

from __future__ import annotations

import time
from typing import Any

from tsfl.metrics import instruments


def observe_round_end(job_id: str, result: Any, opened_at: float,
                      target_epsilon: float | None) -> None:
    """A round ended (published or failed): its duration, participation, bytes and the
    privacy spent so far. ``result`` is the coordinator's ``RoundResult``."""
    m, job = instruments(), {"tsfl_job": job_id}
    m.rounds.add(1, {**job, "outcome": "published" if result.ok else "failed"})
    m.round_duration.record(max(0.0, time.monotonic() - opened_at), job)
    cohort = len(result.accepted) + len(result.rejected) + len(result.dropped)
    if cohort:
        m.participation.set(len(result.accepted) / cohort, job)
    m.updates.add(len(result.accepted), {**job, "stage": "coordinator",
                                         "outcome": "accepted"})
    if result.rejected:
        m.updates.add(len(result.rejected), {**job, "stage": "coordinator",
                                             "outcome": "refused"})
    m.bytes.add(int(result.bytes_up), {**job, "direction": "up"})
    m.bytes.add(int(result.bytes_down), {**job, "direction": "down"})
    if result.epsilon is not None:
        m.epsilon.set(float(result.epsilon), job)
        if target_epsilon:
            m.budget.set(float(result.epsilon) / float(target_epsilon), job)


def observe_evaluation(job_id: str, accuracy: float | None, loss: float | None,
                       previous_loss: float | None) -> None:
    """The released model's evaluation (accuracy, loss) and the relative loss decrease
    since the previous evaluation (the convergence rate)."""
    m, job = instruments(), {"tsfl_job": job_id}
    if accuracy is not None:
        m.accuracy.set(float(accuracy), job)
    if loss is not None:
        m.loss.set(float(loss), job)
        if previous_loss:
            m.convergence.set((float(previous_loss) - float(loss)) / abs(float(previous_loss)),
                              job)


def observe_verdicts(job_id: str, judged: int, refused: int, flagged: int) -> None:
    """The byzantine stage judged a round: refusals and the anomaly rate."""
    m, job = instruments(), {"tsfl_job": job_id}
    stage = {**job, "stage": "byzantine"}
    m.updates.add(judged - refused, {**stage, "outcome": "accepted"})
    m.updates.add(refused, {**stage, "outcome": "refused"})
    m.byzantine.add(refused, job)  # 0 too: the series exists from the first judged round
    if judged:
        m.anomaly_rate.set(flagged / judged, job)


def observe_aggregation(job_id: str, seconds: float) -> None:
    instruments().aggregation_duration.record(max(0.0, seconds), {"tsfl_job": job_id})
