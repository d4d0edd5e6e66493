"""Threshold-HE step messages on the wire (gRPC ``HeSetup`` and ``HeOpen``): msgpack
maps, their sizes bounded by the job's parameters before anything is parsed.

``HeSetup`` stages: ``status`` {} → {ceremony: {attempt, label, state, params,
participants, authorities, key_id} | null, opening: {version, he} | null}; ``advertise``,
``deal``, ``confirm`` (the ceremony's signed messages, :mod:`tsfl.he.threshold.ceremony`)
→ {adverts}, {deals} (each in the recipient's form), {confirms}; ``abort`` {code,
message} → {}. ``HeOpen`` stages (:mod:`tsfl.he.threshold.opening`): ``commit``
{round, commit: {id, d, c, s}} → {commits} (the round's commitments, once closed);
``sketch`` {id, x, v, c, s} → {sketches, decryptors}; ``partial`` {partial: {id, x, d, v,
c, s}} or {} → {sketches, decryptors, partials}.

The largest messages: a deal — one sealed share (4·k·N bytes and 60) per other silo —
and the partial step's answer — t masked partial decryptions of 3.75·k bytes per
encrypted coordinate. A job whose messages would not fit :data:`MAX_MESSAGE_BYTES` is
refused at submission (:func:`he_message_bounds`).
"""

from __future__ import annotations

from typing import Any

import msgpack

from tsfl.he.errors import HeError
from tsfl.he.threshold.ceremony import sealed_share_bytes
from tsfl.he.threshold.params import ThresholdParams
from tsfl.he.threshold.scheme import ciphertext_count

#: the largest HE step message either way (below the gRPC unary limit, 64 MiB)
MAX_MESSAGE_BYTES = 60 * 1024 * 1024
SETUP_STAGES = ("status", "advertise", "deal", "confirm", "abort")
OPEN_STAGES = ("commit", "sketch", "partial")
#: a signed message's certificate, signature, ids and framing
_SIGNED = 2048
_MAX_ITEMS = 4096


def _partial_bytes(params: ThresholdParams, size: int) -> int:
    return ciphertext_count(size, params) * params.limbs * params.poly_degree * 15 // 4


def request_bound(stage: str, params: ThresholdParams, size: int) -> int:
    """The most bytes a device's ``stage`` message takes."""
    n = params.parties
    if stage == "deal":
        return n * (sealed_share_bytes(params) + 256) + _SIGNED
    if stage == "partial":
        return _partial_bytes(params, size) + _SIGNED
    if stage == "sketch":
        return 64 * params.limbs * 4 + _SIGNED
    return 4 * _SIGNED  # status, advertise, confirm, abort


def reply_bound(stage: str, params: ThresholdParams, size: int) -> int:
    """The most bytes the answer to ``stage`` takes."""
    n = params.parties
    poly = 4 * params.limbs * params.poly_degree
    if stage == "deal":
        return n * (poly + sealed_share_bytes(params) + n * 192 + _SIGNED)
    if stage == "partial":
        return (n * request_bound("sketch", params, size)
                + params.threshold * request_bound("partial", params, size))
    return n * 4 * _SIGNED + 4 * _SIGNED


def he_message_bounds(params: ThresholdParams, size: int) -> int:
    """The largest step message of a job; :class:`HeError` ``params`` when it exceeds
    :data:`MAX_MESSAGE_BYTES`."""
    largest = max(reply_bound(s, params, size) for s in ("deal", "partial"))
    largest = max(largest, request_bound("deal", params, size))
    if largest > MAX_MESSAGE_BYTES:
        raise HeError("params", (
            f"an opening or key-ceremony message of this job would take {largest >> 20} MiB, "
            f"more than the {MAX_MESSAGE_BYTES >> 20} MiB a device call carries: encrypt "
            "fewer coordinates (crypto.he.fraction, layers), lower the threshold, or use "
            "keying: shared"))
    return largest


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message)


def unpack(data: bytes, max_bytes: int) -> dict[str, Any]:
    """A step message, parsed within ``max_bytes``; :class:`HeError` ``too_large`` or
    ``malformed``."""
    if len(data) > max_bytes:
        raise HeError("too_large", f"HE step message of {len(data)} bytes exceeds "
                                   f"{max_bytes}")
    try:
        obj = msgpack.unpackb(data, raw=False, max_bin_len=max_bytes, max_str_len=4096,
                              max_array_len=_MAX_ITEMS, max_map_len=_MAX_ITEMS)
    except Exception as exc:  # msgpack raises several unrelated types
        raise HeError("malformed", f"unreadable HE step message: {exc}") from None
    if not isinstance(obj, dict):
        raise HeError("malformed", "an HE step message is a map")
    return obj
