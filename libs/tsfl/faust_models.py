"""Typed faust-streaming records of the events TrustStram FL publishes, for TrustStram
services that subscribe to its topics (see docs/topics.md).

Messages on the wire are tsfl envelopes (msgpack maps, or frames with a raw float32
payload); the ``tsfl`` codec registered here turns them into these records::

    from tsfl.faust_models import ModelRelease, ModelVersion, RoundEvent
    models = app.topic("tsfl.models", value_type=ModelRelease, value_serializer="tsfl")
    registry = app.topic("tsfl.registry", value_type=ModelVersion, value_serializer="tsfl")

Needs the ``faust`` extra: ``pip install truststram-fl[faust]``.
"""

from __future__ import annotations

from typing import Any

import faust
import numpy as np
from faust.serializers import codecs

from tsfl.pipeline import events
from tsfl.pipeline.registry import parse_registry_event
from tsfl.wire.codecs import F32
from tsfl.wire.envelope import WireError, unpack, unpack_frame


class RoundEvent(faust.Record, serializer="tsfl"):
    """``tsfl.rounds``: a job's or round's state change (persisted before it is sent).
    The pipeline's own events name the cohort; this record leaves them out."""

    type: str          # job_started, open, collecting, closing, published, failed, job_finished
    job: str
    round: int
    model_version: int | None = None
    status: str | None = None
    reason: str | None = None


class ModelRelease(faust.Record, serializer="tsfl"):
    """``tsfl.models``: a released global model (after the privacy stage). It names no
    participant and carries no example count or loss (who took part stays with the
    operator: AdminService.ListParticipants)."""

    job: str
    version: int
    round: int
    layout: str        # digest of the model's ParamLayout (see AdminService.GetJob)
    payload: bytes     # little-endian float32, the flat parameter vector
    epsilon: float | None = None  # DP jobs: ε spent once this model is out (at the job's δ)

    def vector(self) -> np.ndarray:
        return np.frombuffer(self.payload, dtype=F32)


class Alert(faust.Record, serializer="tsfl"):
    """``tsfl.alerts``: more than the job's threshold of a round's updates was flagged."""

    job: str
    round: int
    flagged: list[str]
    fraction: float
    threshold: float
    reasons: dict[str, str]


class ModelVersion(faust.Record, serializer="tsfl"):
    """``tsfl.registry``: a released model version for TrustStram's model lifecycle —
    its metrics, provenance and where the artefact is (``tsfl export`` writes it with a
    model card holding the same ``sha256``). Names nobody, like ``tsfl.models``."""

    job: str
    version: int
    round: int
    name: str
    layout: str        # digest of the model's ParamLayout
    parameters: int
    sha256: str        # of the little-endian float32 vector
    metrics: dict[str, float]
    provenance: dict[str, Any]  # spec_sha256, strategy, robust_rule, crypto_mode, privacy
    artefact: dict[str, str]    # topic, store, export (the tsfl export command)
    epsilon: float | None = None


class TsflCodec(codecs.Codec):
    """Decodes tsfl envelopes and frames into the dicts faust builds records from."""

    def _dumps(self, obj: Any) -> bytes:
        raise NotImplementedError("TrustStram FL topics are written by TrustStram FL only")

    def _loads(self, s: bytes) -> Any:
        if s[:4] == b"TSF1":
            head, payload = unpack_frame(s, "model")
            extra = head.get("extra", {})
            return {"job": head["job"], "version": head["version"],
                    "round": extra.get("round", 0), "layout": head["layout"],
                    "payload": bytes(payload), "epsilon": extra.get("epsilon")}
        try:
            obj = unpack(s, events.ROUND_EVENT)
        except WireError:
            try:
                obj = parse_registry_event(s)
            except WireError:
                obj = unpack(s, events.ALERT)
                return {k: obj[k] for k in Alert._options.fields}
            return {k: obj[k] for k in ModelVersion._options.fields if k in obj}
        obj.pop("v", None)
        obj.pop("kind", None)
        known = set(RoundEvent._options.fields)
        return {k: v for k, v in obj.items() if k in known}


codecs.register("tsfl", TsflCodec())
