"""Partial aggregates: what each aggregator replica publishes, and the merge step.

An aggregator replica folds the clients of a round whose update keys fall in the
partitions it owns (:mod:`tsfl.pipeline.aggregator_replicas`) and publishes a *partial*:
an ``aggregate`` frame (the same header and payload: the weighted mean of what it folded,
``weight_total``, ``accepted``, ``rejected``, ...) with a ``partial`` map naming the
partition indices it covers (``parts`` of ``of``), the round's uploaded clients it
accounts for (``covers``), the size and digest of the whole uploaded set (``uploaded``,
``digest``: from the CLOSING event), the example weight of its ``train_loss``
(``loss_examples``) and the fold's error when nothing in it was valid. A replica that owns
every partition publishes one partial covering the round.

The release stage merges (:class:`PartialMerge`): partials are idempotent by
(job, round, parts) — a redelivered or re-published one is dropped — and a round is
complete once some of its partials cover every partition exactly once and their
``covers`` union is the uploaded set (its digest). The merged mean is
Σ mean_i·w_i / Σ w_i in float64, so the released model equals the single-aggregator
result up to float summation order; a complete round of one partial is that partial,
bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tsfl.bus.base import Record, position_of
from tsfl.errors import ErrorKind, TsflError
from tsfl.pipeline.events import AGGREGATE
from tsfl.wire.codecs import encode_f32
from tsfl.wire.envelope import pack_frame

NOTHING_VALID = "no valid update to aggregate"


class PartialError(TsflError, ValueError):
    """A partial aggregate that cannot be merged (malformed, or inconsistent with the
    round's other partials)."""

    kind = ErrorKind.INVALID


class MergeError(PartialError):
    """A round's complete set of partials does not account for its uploaded clients."""


def uploaded_digest(uploaded: Iterable[str]) -> str:
    """A digest of a round's uploaded set (order-free)."""
    h = hashlib.sha256()
    for client in sorted(set(uploaded)):
        h.update(client.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


@dataclass
class PartialFold:
    """One replica's share of a round, ready to publish."""

    job_id: str
    round: int
    version: int
    layout: str
    parts: frozenset[int]
    partitions: int
    uploaded: set[str]
    covers: list[str]
    replica: str
    accepted: list[str]
    rejected: dict[str, str]
    num_examples: int
    train_loss: float | None
    loss_examples: int
    mean: np.ndarray | None
    weight_total: float
    weighting: str
    unclipped: int
    error: str | None = None


def partial_message(p: PartialFold) -> bytes:
    """The ``aggregate`` frame of a partial (see the module docstring)."""
    head: dict[str, Any] = {
        "job": p.job_id, "round": p.round, "version": p.version, "layout": p.layout,
        "ok": True, "accepted": p.accepted, "rejected": p.rejected,
        "num_examples": p.num_examples, "train_loss": p.train_loss, "reason": None,
        "weight_total": float(p.weight_total), "weighting": p.weighting,
        "unclipped": p.unclipped,
        "partial": {"parts": sorted(p.parts), "of": p.partitions, "covers": sorted(p.covers),
                    "uploaded": len(p.uploaded), "digest": uploaded_digest(p.uploaded),
                    "loss_examples": p.loss_examples, "replica": p.replica,
                    "error": p.error},
    }
    payload: bytes | memoryview = encode_f32(p.mean) if p.mean is not None else b""
    return pack_frame(AGGREGATE, head, payload)


def is_partial(head: dict[str, Any]) -> bool:
    return isinstance(head.get("partial"), dict)


@dataclass
class _Piece:
    parts: frozenset[int]
    head: dict[str, Any]
    mean: np.ndarray | None


@dataclass
class _Pending:
    # pieces by what they say the round is (version, layout, of, digest, uploaded)
    groups: dict[tuple[Any, ...], dict[frozenset[int], _Piece]] = field(default_factory=dict)
    held: list[Record] = field(default_factory=list)


@dataclass
class Merged:
    """A complete round: the aggregate header and mean (None: nothing valid, ``reason``
    says why), and the partial records to settle once it is released."""

    head: dict[str, Any]
    mean: np.ndarray | None
    held: list[Record]
    reason: str | None = None


def _check(head: dict[str, Any], size: int, payload_len: int) -> frozenset[int]:
    part = head["partial"]
    try:
        of = int(part["of"])
        parts = frozenset(int(x) for x in part["parts"])
        covers = part["covers"]
        ok = (of >= 1 and parts and all(0 <= x < of for x in parts)
              and isinstance(covers, list) and all(isinstance(c, str) for c in covers)
              and isinstance(part["digest"], str) and int(part["uploaded"]) >= 0)
    except (KeyError, TypeError, ValueError) as exc:
        raise PartialError(f"malformed partial aggregate: {exc}") from exc
    if not ok:
        raise PartialError("malformed partial aggregate header")
    if payload_len not in (0, 4 * size):
        raise PartialError(f"partial aggregate of {payload_len} bytes, the "
                                        f"layout has {size} values")
    if payload_len and not head["accepted"]:
        raise PartialError("a partial with a mean must accept someone")
    if not payload_len and head["accepted"]:
        raise PartialError("a partial that accepts someone must carry their mean")
    accepted, rejected = head["accepted"], head["rejected"]
    if not isinstance(accepted, list) or not isinstance(rejected, dict):
        raise PartialError("malformed partial aggregate: accepted or rejected")
    if len(set(accepted)) != len(accepted) or not all(isinstance(c, str) for c in accepted):
        raise PartialError(f"partial {sorted(parts)} accepts a client twice")
    return parts


#: the partition a round's client is placed in, given the partition count
Placement = Callable[[str, int], int]


def exact_cover(pieces: Iterable[frozenset[int]], n: int) -> list[frozenset[int]] | None:
    """Some of ``pieces`` that cover ``range(n)`` exactly once each, or None."""
    options = sorted(set(pieces), key=lambda p: (-len(p), sorted(p)))
    target = frozenset(range(n))

    def go(covered: frozenset[int], chosen: list[frozenset[int]]
           ) -> list[frozenset[int]] | None:
        if covered == target:
            return chosen
        first = min(target - covered)
        for p in options:
            if first in p and not p & covered:
                found = go(covered | p, [*chosen, p])
                if found is not None:
                    return found
        return None

    return go(frozenset(), [])


class PartialMerge:
    """The release stage's merge of partial aggregates, per (job, round), in memory: the
    partial records stay unsettled (uncommitted) until the round is released, so a
    restarted release stage reads them all again.

    A partial is checked on its own before it is kept (each accepted client once, a mean
    exactly when it accepts someone; with ``placement``, every client it covers or accepts
    placed in one of its partitions — an update lives in one partition, so no two
    partitions' partials can count the same client), so a refused partial never blocks
    the honest ones; partials are grouped by what they say
    the round is (model version, layout, partition count, uploaded set), so one that
    disagrees with the others waits apart instead of refusing them. A complete cover whose
    clients do not make up the uploaded set raises :class:`MergeError`: the round cannot
    be released without a client, so the caller fails it."""

    def __init__(self) -> None:
        self._rounds: dict[tuple[str, int], _Pending] = {}

    def offer(self, record: Record, head: dict[str, Any], payload: memoryview,
              size: int, placement: Placement | None = None) -> Merged | None:
        """Add a partial (its record is held); the merged round once complete. Raises
        :class:`PartialError` for a partial that cannot be merged (not held), and
        :class:`MergeError` for a round whose complete cover does not account for its
        uploaded set (its records, this one's included, are returned by :meth:`drop`)."""
        parts = _check(head, size, len(payload))
        of = int(head["partial"]["of"])
        if placement is not None and any(
                placement(c, of) not in parts
                for c in (*head["partial"]["covers"], *head["accepted"])):
            raise PartialError(f"partial {sorted(parts)} covers or accepts a client placed "
                               f"in another partition")
        key = (head["job"], head["round"])
        pending = self._rounds.setdefault(key, _Pending())
        pending.held.append(position_of(record))
        identity = (head["version"], head["layout"], of, head["partial"]["digest"],
                    int(head["partial"]["uploaded"]))
        group = pending.groups.setdefault(identity, {})
        if parts in group:  # redelivered or re-published: counted once
            return None
        mean = np.frombuffer(payload, dtype="<f4").copy() if len(payload) else None
        group[parts] = _Piece(parts, head, mean)
        cover = exact_cover(group, of)
        if cover is None:
            return None
        try:
            merged = _merge([group[p] for p in cover])
        except PartialError as exc:  # the caller fails the round (drop gives its records)
            raise MergeError(str(exc)) from exc
        del self._rounds[key]
        merged.held = pending.held
        return merged

    def drop(self, job_id: str, up_to: int | None = None, *,
             only: int | None = None) -> list[Record]:
        """Forget the job's rounds (up to round ``up_to``: released or failed; or round
        ``only``); returns their held records, to settle."""
        held: list[Record] = []
        for key in [k for k in self._rounds if k[0] == job_id and (
                k[1] == only if only is not None else up_to is None or k[1] <= up_to)]:
            held.extend(self._rounds.pop(key).held)
        return held

    def pending(self) -> int:
        """Rounds waiting for more partials."""
        return len(self._rounds)


def _merge(pieces: list[_Piece]) -> Merged:
    heads = [p.head for p in pieces]
    first = heads[0]
    covers = [c for h in heads for c in h["partial"]["covers"]]
    if len(covers) != len(set(covers)) or len(covers) != first["partial"]["uploaded"] or \
            uploaded_digest(covers) != first["partial"]["digest"]:
        raise PartialError(f"partials of round {first['round']} of "
                                           f"{first['job']} cover {len(covers)} clients, "
                                           f"the round uploaded {first['partial']['uploaded']}")
    accepted = [c for h in heads for c in h["accepted"]]
    if len(accepted) != len(set(accepted)):
        raise PartialError(f"partials of round {first['round']} of {first['job']} accept a "
                           f"client twice")
    rejected = {c: r for h in heads for c, r in h["rejected"].items()}
    losses = [(h["train_loss"], h["partial"].get("loss_examples") or 0) for h in heads
              if h.get("train_loss") is not None]
    loss_weight = sum(w for _, w in losses)
    unclipped = [int(h["unclipped"]) for h in heads if h.get("unclipped") is not None]
    head = {
        "job": first["job"], "round": first["round"], "version": first["version"],
        "layout": first["layout"], "ok": True, "accepted": accepted, "rejected": rejected,
        "num_examples": sum(int(h.get("num_examples") or 0) for h in heads),
        "train_loss": (sum(loss * w for loss, w in losses) / loss_weight
                       if loss_weight else None),
        "reason": None, "weighting": first.get("weighting", "examples"),
        "unclipped": sum(unclipped) if unclipped else None,
        "weight_total": float(sum(float(h.get("weight_total") or 0.0) for h in heads
                                  if h["accepted"])),
    }
    means = [(p.mean, float(p.head["weight_total"])) for p in pieces if p.mean is not None]
    if not means:
        errors = [h["partial"].get("error") for h in heads if h["partial"].get("error")]
        return Merged(head, None, [], errors[0] if errors else NOTHING_VALID)
    if len(means) == 1:  # the single-aggregator result, bit for bit
        return Merged(head, means[0][0], [])
    total = np.zeros(means[0][0].shape, dtype=np.float64)
    for mean, weight in means:
        total += mean.astype(np.float64) * weight
    return Merged(head, (total / head["weight_total"]).astype(np.float32), [])


__all__ = ["MergeError", "Merged", "PartialError", "PartialFold", "PartialMerge", "exact_cover",
           "is_partial", "partial_message", "uploaded_digest"]
