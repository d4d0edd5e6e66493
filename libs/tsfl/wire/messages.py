"""Typed messages: client updates and global models.

Decoders trust nothing: the declared layout digest, sizes, numbers of examples and
the payload checksum are all checked, and non-finite values are refused.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from tsfl.core.layout import ParamLayout
from tsfl.core.update import Update
from tsfl.wire.codecs import check_chain, decode_f32, encode_f32
from tsfl.wire.envelope import DEFAULT_MAX_MESSAGE_BYTES, WireError, pack, require, unpack

MAX_EXAMPLES = 1 << 40


def encode_update(update: Update, layout: ParamLayout) -> bytes:
    payload = encode_f32(update.delta)
    return pack("update", {
        "job": update.job_id,
        "round": update.round,
        "client": update.client_id,
        "model_version": update.model_version,
        "num_examples": update.num_examples,
        "metrics": {k: float(v) for k, v in update.metrics.items()},
        "layout": layout.digest,
        "codecs": list(update.codecs or ("f32",)),
        "payload": payload,
        "crc32": zlib.crc32(payload),
    })


def peek_update_meta(data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Job, round, client and sizes of an update without decoding its payload."""
    obj = unpack(data, "update", max_bytes)
    return {
        "job_id": require(obj, "job", str),
        "round": require(obj, "round", int),
        "client_id": require(obj, "client", str),
        "model_version": require(obj, "model_version", int),
        "num_examples": require(obj, "num_examples", int),
    }


def decode_update(data: bytes, layout: ParamLayout, *,
                  max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                  allow_nonfinite: bool = False) -> Update:
    obj = unpack(data, "update", max_bytes)
    job = require(obj, "job", str)
    rnd = require(obj, "round", int)
    client = require(obj, "client", str)
    version = require(obj, "model_version", int)
    n = require(obj, "num_examples", int)
    metrics = require(obj, "metrics", dict)
    digest = require(obj, "layout", str)
    chain = check_chain(require(obj, "codecs", list))
    payload = require(obj, "payload", bytes)
    crc = require(obj, "crc32", int)
    if rnd < 0 or version < 0:
        raise WireError("malformed", "round and model_version must be >= 0")
    if not client or len(client) > 256:
        raise WireError("malformed", "client id must be 1..256 characters")
    if not 0 < n <= MAX_EXAMPLES:
        raise WireError("examples", f"num_examples must be in 1..{MAX_EXAMPLES}, got {n}")
    if digest != layout.digest:
        raise WireError("layout", f"update was built for model layout {digest}, "
                                  f"the job's is {layout.digest}")
    if zlib.crc32(payload) != crc:
        raise WireError("checksum", "payload checksum mismatch")
    clean_metrics: dict[str, float] = {}
    for key, value in metrics.items():
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not isinstance(key, str) or not numeric:
            raise WireError("malformed", f"metric {key!r} must map a name to a number")
        clean_metrics[key] = float(value)
    delta = decode_f32(payload, layout.total_size)
    if not allow_nonfinite and not np.isfinite(delta).all():
        raise WireError("nonfinite", "update contains NaN or Inf")
    return Update(job_id=job, round=rnd, client_id=client, model_version=version,
                  num_examples=n, delta=delta, metrics=clean_metrics, codecs=chain,
                  wire_bytes=len(data))


def encode_model(job_id: str, version: int, vector: np.ndarray, layout: ParamLayout,
                 extra: dict[str, Any] | None = None) -> bytes:
    payload = encode_f32(vector)
    return pack("model", {
        "job": job_id, "version": version, "layout": layout.digest, "codecs": ["f32"],
        "payload": payload, "crc32": zlib.crc32(payload), "extra": extra or {},
    })


def decode_model(data: bytes, layout: ParamLayout,
                 max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> tuple[str, int, np.ndarray,
                                                                      dict[str, Any]]:
    obj = unpack(data, "model", max_bytes)
    job = require(obj, "job", str)
    version = require(obj, "version", int)
    if require(obj, "layout", str) != layout.digest:
        raise WireError("layout", "model layout differs from the job's")
    check_chain(require(obj, "codecs", list))
    payload = require(obj, "payload", bytes)
    if zlib.crc32(payload) != require(obj, "crc32", int):
        raise WireError("checksum", "model payload checksum mismatch")
    vec = decode_f32(payload, layout.total_size)
    return job, version, vec, require(obj, "extra", dict)
