"""The rows the store returns, typed: one :class:`~typing.TypedDict` per table, with the
columns of :mod:`tsfl.storage.schema` (a checkpoint's vector decoded to float32 and its
strategy state unpacked). Readers get names and types checked by mypy instead of
``dict[str, Any]``; the store's write methods keep their explicit arguments."""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

from tsfl.core.layout import ParamLayout


class JobRow(TypedDict):
    id: str
    name: str
    spec: dict[str, Any]
    spec_sha256: str
    status: str  # RUNNING, COMPLETED, FAILED, CANCELLED, BUDGET_EXHAUSTED
    reason: str | None
    layout: list[dict[str, Any]] | None  # ParamLayout.to_json()
    created_at: str
    updated_at: str
    enrollment_hash: str | None
    owner: str | None


class RoundRow(TypedDict):
    id: int
    job_id: str
    number: int
    state: str  # a tsfl.storage.states.RoundState value
    reason: str | None
    model_version: int
    cohort_size: int
    accepted: int
    rejected: int
    metrics: dict[str, Any] | None
    population: int | None
    opened_at: str
    updated_at: str


class ParticipantRow(TypedDict):
    id: int
    job_id: str
    round: int
    client_id: str
    status: str  # selected, uploaded, accepted, rejected, dropped
    reason: str | None
    num_examples: int | None
    bytes_up: int | None
    score: float | None
    metrics: dict[str, Any] | None
    updated_at: str


class CheckpointRow(TypedDict):
    id: int
    job_id: str
    version: int
    round: int
    layout_digest: str
    vector: np.ndarray  # float32, decoded
    strategy_state: dict[str, Any] | None  # unpacked
    created_at: str
    sealed: bytes | None
    outcome: dict[str, Any] | None


class AuditRow(TypedDict):
    id: int
    job_id: str
    seq: int
    kind: str
    actor: str
    payload: dict[str, Any]
    created_at: str
    prev_hash: str
    hash: str


class DeviceRow(TypedDict):
    id: int
    job_id: str
    device_id: str
    token_hash: str
    traits: dict[str, Any] | None
    registered_at: str
    last_seen: str


def job_layout(row: JobRow) -> ParamLayout:
    """The job's model layout (every job row has one once admitted)."""
    if row["layout"] is None:
        raise ValueError(f"job {row['id']!r} has no layout")
    return ParamLayout.from_json(row["layout"])
