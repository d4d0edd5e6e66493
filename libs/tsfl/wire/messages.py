"""Typed messages: client updates and global models, as frames.

Decoders trust nothing: the layout digest, sizes, numbers of examples, the payload
checksum and (for updates) finiteness are all checked before a value is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tsfl.compress import Encoded
from tsfl.compress.errors import CodecError
from tsfl.compress.xordelta import XOR_CHAIN, decode_xor_delta, encode_xor_delta
from tsfl.core.finite import all_finite
from tsfl.core.layout import ParamLayout
from tsfl.core.update import Update
from tsfl.wire.codecs import check_chain, decode_f32, decode_payload, encode_f32
from tsfl.wire.envelope import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Frame,
    WireError,
    checksum,
    pack_frame,
    require,
    unpack_frame,
)

MAX_EXAMPLES = 1 << 40


def encode_update(update: Update, layout: ParamLayout, encoded: Encoded | None = None,
                  sealed: bytes | None = None) -> bytes:
    """The update's frame: raw float32, or the payload ``encoded`` by a codec chain.

    An HE job's update (``sealed``: the encrypted coordinates, :mod:`tsfl.he.sealed`)
    carries only its clear coordinates in ``update.delta`` / ``encoded``, and the
    encrypted section after them (its length in the header's ``he.sb``).
    """
    header: dict[str, Any] = {
        "job": update.job_id,
        "round": update.round,
        "client": update.client_id,
        "model_version": update.model_version,
        "num_examples": update.num_examples,
        "metrics": {k: float(v) for k, v in update.metrics.items()},
        "layout": layout.digest,
        "codecs": ["f32"],
    }
    payload: bytes | memoryview
    if encoded is None:
        payload = encode_f32(update.delta)
    else:
        header["codecs"] = list(encoded.chain.names)
        if not encoded.chain.is_raw:
            header["cp"] = encoded.params
        payload = encoded.payload
    return pack_frame("update", header, append_sealed(header, payload, sealed))


def append_sealed(header: dict[str, Any], payload: bytes | memoryview,
                  sealed: bytes | None) -> bytes | memoryview:
    """``payload`` followed by an encrypted section (its length in ``he.sb``): the
    inverse of :func:`split_sealed`, for update, aggregate and model frames."""
    if not sealed:
        return payload
    header["he"] = {"sb": len(sealed)}
    return b"".join((payload, sealed))


def split_sealed(head: dict[str, Any], payload: memoryview
                  ) -> tuple[memoryview, memoryview | None]:
    """(clear part, encrypted section or None) of a frame's payload."""
    he = head.get("he")
    if he is None:
        return payload, None
    if not isinstance(he, dict):
        raise WireError("malformed", "field 'he' must be a map")
    sb = he.get("sb")
    if not isinstance(sb, int) or isinstance(sb, bool) or not 0 < sb <= len(payload):
        raise WireError("malformed", f"he.sb must be 1..{len(payload)}, got {sb!r}")
    cut = len(payload) - sb
    return payload[:cut], payload[cut:]


def _meta(head: dict[str, Any]) -> dict[str, Any]:
    codecs = require(head, "codecs", list)
    if not all(isinstance(c, str) for c in codecs):
        raise WireError("codec", "codec names must be strings")
    meta = {
        "codecs": "+".join(codecs),
        "job_id": require(head, "job", str),
        "round": require(head, "round", int),
        "client_id": require(head, "client", str),
        "model_version": require(head, "model_version", int),
        "num_examples": require(head, "num_examples", int),
    }
    if meta["round"] < 0 or meta["model_version"] < 0:
        raise WireError("malformed", "round and model_version must be >= 0")
    if not meta["client_id"] or len(meta["client_id"]) > 256:
        raise WireError("malformed", "client id must be 1..256 characters")
    if not 0 < meta["num_examples"] <= MAX_EXAMPLES:
        raise WireError("examples",
                        f"num_examples must be in 1..{MAX_EXAMPLES}, got {meta['num_examples']}")
    return meta


def peek_update_meta(data: Frame, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, *,
                     verify: bool = False) -> dict[str, Any]:
    """Job, round, client and sizes of an update without decoding its values.

    ``verify`` also checks the payload checksum (what the coordinator does on ingest).
    """
    head, _ = unpack_frame(data, "update", max_bytes, verify=verify)
    return _meta(head)


def decode_update(data: Frame, layout: ParamLayout, *,
                  max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                  allow_nonfinite: bool = False, verify_checksum: bool = True,
                  he_clear: np.ndarray | None = None) -> Update:
    """Decode and check an update.

    ``verify_checksum=False`` is for stages behind the coordinator, which verified the
    checksum at the edge (the bus hop is covered by Kafka's own record CRC32C).
    ``he_clear`` (an HE job's clear coordinates) says the update must carry an encrypted
    section: its clear part is scattered into a full-size delta (zeros where encrypted)
    and the section is returned unparsed in ``Update.sealed``. Without it, an update
    with an encrypted section is refused, and so is one without it for an HE job.
    """
    head, payload = unpack_frame(data, "update", max_bytes, verify=verify_checksum)
    payload, sealed = split_sealed(head, payload)
    if (sealed is None) != (he_clear is None):
        raise WireError("he", "this job encrypts its updates (crypto.mode he); the update is "
                              "in the clear" if sealed is None else
                              "an encrypted update for a job that does not use HE")
    meta = _meta(head)
    metrics = require(head, "metrics", dict)
    digest = require(head, "layout", str)
    chain = check_chain(require(head, "codecs", list))
    if digest != layout.digest:
        raise WireError("layout", f"update was built for model layout {digest}, "
                                  f"the job's is {layout.digest}")
    clean_metrics: dict[str, float] = {}
    for key, value in metrics.items():
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not isinstance(key, str) or not numeric:
            raise WireError("malformed", f"metric {key!r} must map a name to a number")
        clean_metrics[key] = float(value)
    size = layout.total_size if he_clear is None else int(he_clear.size)
    delta = decode_payload(chain, head.get("cp"), payload, size)
    if not allow_nonfinite and not all_finite(delta):
        raise WireError("nonfinite", "update contains NaN or Inf")
    if he_clear is not None:
        full = np.zeros(layout.total_size, dtype=np.float32)
        full[he_clear] = delta
        delta = full
    return Update(job_id=meta["job_id"], round=meta["round"], client_id=meta["client_id"],
                  model_version=meta["model_version"], num_examples=meta["num_examples"],
                  delta=delta, metrics=clean_metrics, codecs=chain.names, wire_bytes=len(data),
                  sealed=sealed)


def retag_update(data: Frame, round_number: int) -> bytes:
    """The same update frame, filed under round ``round_number`` (the payload, its
    checksum and every other header field unchanged): an asynchronous job's update joins
    whichever release is open when it arrives, not the one its task was handed out in."""
    head, payload = unpack_frame(data, "update", max(len(data), 1))
    if require(head, "round", int) == round_number:
        return bytes(data)
    header = {k: v for k, v in head.items() if k not in ("v", "kind", "payload_len", "xxh3")}
    header["round"] = int(round_number)
    return pack_frame("update", header, payload)


#: the model version a device asks for when it wants the latest (after its job ended: the
#: final model)
LATEST_MODEL = -1


def encode_model(job_id: str, version: int, vector: np.ndarray, layout: ParamLayout,
                 extra: dict[str, Any] | None = None, sealed: bytes | None = None) -> bytes:
    """A full model frame; an HE job's carries its encrypted coordinates' sum after the
    vector (where the vector holds zeros), see :func:`model_sealed`."""
    header: dict[str, Any] = {"job": job_id, "version": version, "layout": layout.digest,
                              "codecs": ["f32"], "extra": extra or {}}
    return pack_frame("model", header, append_sealed(header, encode_f32(vector), sealed))


def model_sealed(data: Frame, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
                 ) -> memoryview | None:
    """The encrypted section of a model frame (HE jobs after their first round)."""
    head, payload = unpack_frame(data, "model", max_bytes, verify=False)
    return split_sealed(head, payload)[1]


def encode_model_delta(job_id: str, version: int, vector: np.ndarray, base_version: int,
                       base: np.ndarray, layout: ParamLayout,
                       extra: dict[str, Any] | None = None) -> bytes:
    """Model ``version`` as a lossless delta against ``base_version`` (the device's copy);
    ``model_xxh3`` lets the device check the model it rebuilds, bit for bit."""
    return pack_frame("model", {"job": job_id, "version": version, "layout": layout.digest,
                                "codecs": list(XOR_CHAIN), "base": base_version,
                                "model_xxh3": checksum(encode_f32(vector)),
                                "extra": extra or {}}, encode_xor_delta(vector, base))


def model_base(data: Frame, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
               ) -> int | None:
    """The version a model frame is a delta against (None: a full model)."""
    head, _ = unpack_frame(data, "model", max_bytes, verify=False)
    base = head.get("base")
    if base is not None and (not isinstance(base, int) or isinstance(base, bool) or base < 0):
        raise WireError("malformed", "field 'base' must be a version number")
    return base


def decode_model(data: Frame, layout: ParamLayout,
                 max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 base: np.ndarray | None = None
                 ) -> tuple[str, int, np.ndarray, dict[str, Any]]:
    """A model frame: full float32, or a delta applied to ``base`` (the version it names)."""
    head, payload = unpack_frame(data, "model", max_bytes)
    payload, _ = split_sealed(head, payload)
    job = require(head, "job", str)
    version = require(head, "version", int)
    if require(head, "layout", str) != layout.digest:
        raise WireError("layout", "model layout differs from the job's")
    codecs = require(head, "codecs", list)
    extra = require(head, "extra", dict)
    if tuple(codecs) == XOR_CHAIN:
        if base is None or base.size != layout.total_size:
            raise WireError("base", f"model v{version} is a delta against "
                                    f"v{head.get('base')!r}, which the receiver does not hold")
        try:
            vector = decode_xor_delta(payload, base)
        except CodecError as exc:
            raise WireError(exc.code, str(exc)) from None
        if checksum(encode_f32(vector)) != require(head, "model_xxh3", int):
            raise WireError("base", f"the model rebuilt from v{head.get('base')!r} differs "
                                    "from the server's (wrong or corrupted base)")
        return job, version, vector, extra
    if not check_chain(codecs).is_raw:
        raise WireError("codec", f"a model is plain float32 or a delta, not {codecs}")
    return job, version, decode_f32(payload, layout.total_size), extra
