"""Small control messages on ``tsfl.rounds`` and ``tsfl.aggregates``."""

from __future__ import annotations

from typing import Any

import numpy as np

from tsfl.wire.codecs import encode_f32
from tsfl.wire.envelope import pack, pack_frame, require, unpack, unpack_frame

ROUND_EVENT = "round_event"
AGGREGATE = "aggregate"

# round event types
JOB_STARTED = "job_started"
COLLECTING = "collecting"
CLOSING = "closing"
PUBLISHED = "published"
ROUND_FAILED = "failed"
JOB_FINISHED = "job_finished"


def round_event(event_type: str, job_id: str, round_number: int, **fields: Any) -> bytes:
    return pack(ROUND_EVENT, {"type": event_type, "job": job_id, "round": round_number,
                              **fields})


def parse_round_event(data: bytes) -> dict[str, Any]:
    obj = unpack(data, ROUND_EVENT, max_bytes=64 * 1024 * 1024)
    require(obj, "type", str)
    require(obj, "job", str)
    require(obj, "round", int)
    return obj


def aggregate_message(job_id: str, round_number: int, version: int, *, ok: bool,
                      accepted: list[str], rejected: dict[str, str], num_examples: int,
                      train_loss: float | None, vector: np.ndarray | None = None,
                      reason: str | None = None) -> bytes:
    """The aggregator's result: a frame whose payload is the new global model (float32).

    The model travels with the decision (one hop) rather than being read back from the
    checkpoint the aggregator also wrote; a failed round has an empty payload.
    """
    payload = encode_f32(vector) if vector is not None else b""
    return pack_frame(AGGREGATE, {
        "job": job_id, "round": round_number, "version": version, "ok": ok,
        "accepted": accepted, "rejected": rejected, "num_examples": num_examples,
        "train_loss": train_loss, "reason": reason,
    }, payload)


def parse_aggregate(data: bytes) -> tuple[dict[str, Any], memoryview]:
    head, payload = unpack_frame(data, AGGREGATE)
    for field, typ in (("job", str), ("round", int), ("version", int), ("ok", bool),
                       ("accepted", list), ("rejected", dict)):
        require(head, field, typ)
    return head, payload
