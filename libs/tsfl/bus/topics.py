"""Topic names of the pipeline (see docs/topics.md for keys and schemas)."""

from __future__ import annotations

ROUNDS = "tsfl.rounds"
DEVICES = "tsfl.devices"
COHORTS = "tsfl.cohorts"
UPDATES_RAW = "tsfl.updates.raw"
UPDATES_CLIPPED = "tsfl.updates.clipped"
UPDATES_DIRECT = "tsfl.updates.direct"
UPDATES_ENCRYPTED = "tsfl.updates.encrypted"
VERDICTS = "tsfl.verdicts"
AGGREGATES = "tsfl.aggregates"
FAILURES = "tsfl.failures"
MODELS = "tsfl.models"
AUDIT = "tsfl.audit"
ALERTS = "tsfl.alerts"
REGISTRY = "tsfl.registry"  # released versions for the model lifecycle (pipeline.registry)

#: name -> default partition count
TOPICS: dict[str, int] = {
    ROUNDS: 1,
    DEVICES: 4,
    COHORTS: 1,
    UPDATES_RAW: 4,
    UPDATES_CLIPPED: 4,
    UPDATES_DIRECT: 4,
    UPDATES_ENCRYPTED: 4,
    VERDICTS: 4,
    AGGREGATES: 1,
    FAILURES: 1,
    MODELS: 1,
    AUDIT: 1,
    ALERTS: 1,
    REGISTRY: 1,
}


def round_key(job_id: str, round_number: int) -> bytes:
    return f"{job_id}:{round_number}".encode()


def screened_topic(robust_aggregator: str) -> str:
    """Where a job's readable updates go once clipped (or straight from the coordinator
    when nothing clips them): past the byzantine stage when it has nothing to judge (no
    robust rule), so the payload crosses the broker once, to the aggregator alone."""
    return UPDATES_DIRECT if robust_aggregator == "none" else UPDATES_CLIPPED
