"""Topic names of the pipeline (see docs/topics.md for keys and schemas)."""

from __future__ import annotations

ROUNDS = "tsfl.rounds"
DEVICES = "tsfl.devices"
COHORTS = "tsfl.cohorts"
UPDATES_RAW = "tsfl.updates.raw"
UPDATES_CLIPPED = "tsfl.updates.clipped"
UPDATES_ENCRYPTED = "tsfl.updates.encrypted"
VERDICTS = "tsfl.verdicts"
AGGREGATES = "tsfl.aggregates"
MODELS = "tsfl.models"
AUDIT = "tsfl.audit"
ALERTS = "tsfl.alerts"

#: name -> default partition count
TOPICS: dict[str, int] = {
    ROUNDS: 1,
    DEVICES: 4,
    COHORTS: 1,
    UPDATES_RAW: 4,
    UPDATES_CLIPPED: 4,
    UPDATES_ENCRYPTED: 4,
    VERDICTS: 4,
    AGGREGATES: 1,
    MODELS: 1,
    AUDIT: 1,
    ALERTS: 1,
}


def round_key(job_id: str, round_number: int) -> bytes:
    return f"{job_id}:{round_number}".encode()
