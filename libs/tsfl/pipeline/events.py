"""Small control messages on ``tsfl.rounds`` and ``tsfl.aggregates``."""

from __future__ import annotations

from typing import Any

import numpy as np

from tsfl.wire.codecs import encode_f32
from tsfl.wire.envelope import Frame, pack, pack_frame, require, unpack, unpack_frame

ROUND_EVENT = "round_event"
AGGREGATE = "aggregate"
COHORT = "cohort"
VERDICT = "verdict"
DEVICE_EVENT = "device_event"
ALERT = "alert"

# round event types
JOB_STARTED = "job_started"
OPEN = "open"
COLLECTING = "collecting"
CLOSING = "closing"
PUBLISHED = "published"
ROUND_FAILED = "failed"
JOB_FINISHED = "job_finished"


def round_event(event_type: str, job_id: str, round_number: int, **fields: Any) -> bytes:
    return pack(ROUND_EVENT, {"type": event_type, "job": job_id, "round": round_number,
                              **fields})


def parse_round_event(data: Frame) -> dict[str, Any]:
    obj = unpack(data, ROUND_EVENT, max_bytes=64 * 1024 * 1024)
    require(obj, "type", str)
    require(obj, "job", str)
    require(obj, "round", int)
    return obj


def aggregate_message(job_id: str, round_number: int, version: int, *, layout: str, ok: bool,
                      accepted: list[str], rejected: dict[str, str], num_examples: int,
                      train_loss: float | None, mean: np.ndarray | None = None,
                      weight_total: float = 0.0, weighting: str = "examples",
                      unclipped: int | None = None, reason: str | None = None,
                      sealed: bytes | None = None) -> bytes:
    """The aggregator's result: a frame whose payload is the round's weighted mean delta
    (float32) over the model of ``version``; a failed round has an empty payload.

    The release stage (privacy role) turns it into the next model: noise where the job
    has central DP, then the server optimizer. ``weighting`` is ``examples`` (FedAvg's
    n_k weights) or ``uniform`` (DP: one vote per client, so one client's influence is
    bounded by the clip norm); ``unclipped`` counts accepted updates whose norm was
    within the clip bound (adaptive clipping). An HE job's aggregate
    carries the encrypted coordinates' sum (``sealed``) after the mean; its length is
    ``he.sb`` in the header.
    """
    payload: bytes | memoryview = encode_f32(mean) if mean is not None else b""
    head: dict[str, Any] = {
        "job": job_id, "round": round_number, "version": version, "layout": layout, "ok": ok,
        "accepted": accepted, "rejected": rejected, "num_examples": num_examples,
        "train_loss": train_loss, "reason": reason, "weight_total": float(weight_total),
        "weighting": weighting, "unclipped": unclipped,
    }
    from tsfl.wire.messages import append_sealed

    return pack_frame(AGGREGATE, head, append_sealed(head, payload, sealed))


def parse_aggregate(data: Frame) -> tuple[dict[str, Any], memoryview]:
    head, payload = unpack_frame(data, AGGREGATE)
    for field, typ in (("job", str), ("round", int), ("version", int), ("layout", str),
                       ("ok", bool), ("accepted", list), ("rejected", dict)):
        require(head, field, typ)
    return head, payload


def aggregate_parts(head: dict[str, Any], payload: memoryview
                    ) -> tuple[memoryview, memoryview | None]:
    """(mean, encrypted sum or None) of a parsed aggregate's payload."""
    from tsfl.wire.messages import split_sealed

    return split_sealed(head, payload)


def cohort_message(job_id: str, round_number: int, cohort: list[str],
                   reason: str | None = None,
                   codecs: dict[str, dict[str, Any]] | None = None,
                   population: int | None = None) -> bytes:
    """The selector's choice for a round (empty, with a reason, when it cannot choose),
    the number of registered devices it was drawn from, and, for adaptive compression,
    each chosen device's codec chain and ratio."""
    body: dict[str, Any] = {"job": job_id, "round": round_number, "cohort": cohort,
                            "reason": reason}
    if population is not None:
        body["population"] = population
    if codecs:
        body["codecs"] = codecs
    return pack(COHORT, body)


def parse_cohort(data: Frame) -> dict[str, Any]:
    obj = unpack(data, COHORT, max_bytes=64 * 1024 * 1024)
    for field, typ in (("job", str), ("round", int), ("cohort", list)):
        require(obj, field, typ)
    return obj


def verdict_message(job_id: str, round_number: int, client_id: str, *, weight: float,
                    reason: str, scores: dict[str, float] | None = None,
                    scale: float = 1.0) -> bytes:
    """The Byzantine stage's decision on one update: a vote weight in [0, 1], a factor the
    update is scaled by before folding (norm bounding, FLTrust), the rule's scores, and
    why."""
    return pack(VERDICT, {"job": job_id, "round": round_number, "client": client_id,
                          "weight": float(weight), "reason": reason, "scores": scores or {},
                          "scale": float(scale)})


def parse_verdict(data: Frame) -> dict[str, Any]:
    obj = unpack(data, VERDICT, max_bytes=1024 * 1024)
    for field, typ in (("job", str), ("round", int), ("client", str), ("weight", float),
                       ("reason", str)):
        require(obj, field, typ)
    if not 0.0 <= obj["weight"] <= 1.0:
        raise ValueError(f"verdict weight {obj['weight']} outside [0, 1]")
    scale = obj.setdefault("scale", 1.0)
    if not isinstance(scale, float) or not 0.0 <= scale <= 1e6:
        raise ValueError(f"verdict scale {scale!r} is not a finite factor in [0, 1e6]")
    return obj


def alert_message(job_id: str, round_number: int, *, flagged: list[str], fraction: float,
                  threshold: float, reasons: dict[str, str]) -> bytes:
    """``tsfl.alerts``: more than ``threshold`` of a round's updates were flagged."""
    return pack(ALERT, {"job": job_id, "round": round_number, "flagged": flagged,
                        "fraction": float(fraction), "threshold": float(threshold),
                        "reasons": reasons})


def device_event(job_id: str, device_id: str, kind: str, **fields: Any) -> bytes:
    return pack(DEVICE_EVENT, {"job": job_id, "device": device_id, "event": kind, **fields})


def peek_model_job(data: Frame) -> str:
    """The job a ``tsfl.models`` frame belongs to (header only)."""
    head, _ = unpack_frame(data, "model", verify=False)
    return require(head, "job", str)
