"""``tsfl.registry``: every released model version announced to TrustStram's model
lifecycle — version, metrics, provenance and where the artefact is.

The coordinator announces a version once the round is PUBLISHED and its metrics are
known (the distributed deployment: after its server-side evaluation; the embedded run:
after its central evaluation). An announcement is what the holders of ``tsfl.models``
may see: metrics of the released model (held-out accuracy and loss, ε), never who took
part, how many, or their losses. It names the model by the SHA-256 of its float32
vector, which ``tsfl export`` writes into the model card, so a registry can check the
file it is handed is the version it was told about.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from tsfl.bus import topics
from tsfl.wire.envelope import WireError, pack, require, unpack

if TYPE_CHECKING:
    from tsfl.bus.base import Bus
    from tsfl.config import JobSpec
    from tsfl.core.layout import ParamLayout
    from tsfl.storage.store import Store

log = logging.getLogger("tsfl.registry")

REGISTRY_EVENT = "model_version"
#: the released-model metrics an announcement may carry (computed from the model alone)
PUBLIC_METRICS = ("test_accuracy", "test_loss")
MAX_EVENT_BYTES = 64 * 1024


def vector_sha256(vector: np.ndarray) -> str:
    """The SHA-256 of a model's little-endian float32 vector (its identity on the
    registry and in the model card)."""
    return hashlib.sha256(np.ascontiguousarray(vector, "<f4").data).hexdigest()


def accountant_of(spec: JobSpec) -> str | None:
    """The accountant a DP job's ε comes from (PLD for Poisson sampling, RDP for
    fixed-size samples; record-level DP-SGD: each device's own PLD)."""
    if spec.privacy.mode != "none":
        return "pld" if spec.privacy.sampling == "poisson" else "rdp"
    return "pld" if spec.training.dp_sgd is not None else None


def provenance(spec: JobSpec) -> dict[str, Any]:
    """What a job's every version was made under (from its spec alone)."""
    p = spec.privacy
    dp_sgd = spec.training.dp_sgd
    return {
        "spec_sha256": spec.sha256(),
        "strategy": spec.strategy.name,
        "robust_rule": spec.robust.aggregator,
        "crypto_mode": spec.crypto.mode,
        "warm_start": spec.model.init is not None,
        "privacy": {
            "mode": p.mode, "mechanism": p.mechanism if p.mode != "none" else None,
            "delta": p.delta if p.mode != "none" else (dp_sgd.delta if dp_sgd else None),
            "accountant": accountant_of(spec),
            "record_level": dp_sgd is not None,
            "guarantee": ("reproducible, not private" if spec.seeded_privacy else
                          "differential privacy" if spec.private else "none")},
    }


def registry_event(job_id: str, spec: JobSpec, layout: ParamLayout, version: int,
                   round_number: int, vector: np.ndarray, metrics: dict[str, Any],
                   epsilon: float | None, sha256: str | None = None) -> bytes:
    """The ``model_version`` message announcing one released version (``sha256``: the
    vector's, when already computed)."""
    public = {k: float(v) for k, v in metrics.items()
              if k in PUBLIC_METRICS and isinstance(v, int | float) and math.isfinite(v)}
    return pack(REGISTRY_EVENT, {
        "job": job_id, "version": int(version), "round": int(round_number),
        "name": spec.name, "layout": layout.digest, "parameters": layout.total_size,
        "sha256": sha256 or vector_sha256(vector), "metrics": public,
        "epsilon": None if epsilon is None else float(epsilon),
        "provenance": provenance(spec),
        "artefact": {"topic": topics.MODELS, "store": "checkpoints",
                     "export": f"tsfl export {job_id} --version {int(version)} "
                               "--format safetensors|onnx|torchscript"},
    })


def parse_registry_event(data: bytes) -> dict[str, Any]:
    """A ``tsfl.registry`` message, checked (bounded, typed)."""
    obj = unpack(data, REGISTRY_EVENT, max_bytes=MAX_EVENT_BYTES)
    for key, kind in (("job", str), ("name", str), ("version", int), ("round", int),
                      ("parameters", int), ("sha256", str), ("layout", str),
                      ("metrics", dict), ("provenance", dict), ("artefact", dict)):
        require(obj, key, kind)
    values = [*obj["metrics"].values(), *([] if obj.get("epsilon") is None
                                          else [obj["epsilon"]])]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
               for v in values) or not all(isinstance(k, str) for k in obj["metrics"]):
        raise WireError("malformed", "metrics and epsilon must be finite numbers")
    return obj


async def announce(bus: Bus, store: Store | None, job_id: str, spec: JobSpec,
                   layout: ParamLayout, version: int, round_number: int,
                   vector: np.ndarray, metrics: dict[str, Any],
                   epsilon: float | None) -> None:
    """Publish ``version`` on ``tsfl.registry`` (keyed by job, in version order), and
    audit it (``registry.announced``) when a store is given. Never fails the job: a
    refused publish is logged (the model stays in the store; ``tsfl export`` reads it)."""
    digest = vector_sha256(vector)
    data = registry_event(job_id, spec, layout, version, round_number, vector, metrics,
                          epsilon, digest)
    try:
        await bus.publish(topics.REGISTRY, data, key=job_id.encode())
        if store is not None:
            await store.append_audit(job_id, "registry.announced", {
                "version": int(version), "round": int(round_number),
                "sha256": digest})
    except Exception as exc:
        log.warning("announcing %s v%d on %s failed: %s", job_id, version, topics.REGISTRY,
                    exc)
