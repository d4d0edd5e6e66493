"""The Byzantine-detection role: ``tsfl.updates.clipped`` (+ ``tsfl.rounds``) →
``tsfl.verdicts`` (+ ``tsfl.alerts``).

Decisions travel as small messages (a vote weight in [0, 1], a scale, the rule's scores,
a reason); the payload stays on its topic. A job without a robust rule gets no verdicts:
the aggregator counts each of its updates with weight 1 as it arrives (they do not even
pass here: they travel on ``tsfl.updates.direct``). A job with one (``robust.aggregator``)
has its round's updates held until the coordinator's CLOSING names the uploads; the rule
(:mod:`tsfl.robust`) then judges them together, and the verdicts, the per-client
reputation and an alert when more than ``robust.alert_fraction`` of the round is flagged
are persisted (participants table, audit trail, client history) before the verdicts are
published and the round's records committed.

Client history (WFAgg's temporal filter, reputation) is stored as it stands *before*
each round and read back before each judgement, so a restarted service (or another
replica) that judges a round again starts from the same history and publishes the same
verdicts; a round whose verdicts are recorded already gets them again as recorded.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record, position_of
from tsfl.config import JobSpec
from tsfl.core.layout import ParamLayout
from tsfl.pipeline import events
from tsfl.pipeline.role import BusRole
from tsfl.pipeline.round_metrics import observe_verdicts
from tsfl.pipeline.routing import update_key
from tsfl.robust.anomaly import Reputation
from tsfl.robust.judge import judge_round
from tsfl.robust.wfagg import ClientHistory
from tsfl.storage.rows import job_layout
from tsfl.storage.store import Store
from tsfl.wire.envelope import WireError
from tsfl.wire.messages import decode_update, peek_update_meta

if TYPE_CHECKING:
    from tsfl.robust.root import RootTrainer


@dataclass
class _Pending:
    updates: dict[str, tuple[np.ndarray, int, float]] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    closing: set[str] | None = None
    held: list[Record] = field(default_factory=list)
    judged: bool = False  # verdicts out (a replica keeps the round until it is done)


@dataclass
class _Job:
    spec: JobSpec
    layout: ParamLayout
    history: ClientHistory
    reputation: Reputation
    next_round: int = 1  # the round the in-memory history is the input to
    root: RootTrainer | None = None  # FLTrust's server-side root dataset
    rounds: dict[int, _Pending] = field(default_factory=dict)


class Byzantine(BusRole):
    name = "byzantine"

    def __init__(self, bus: Bus, store: Store, *, group_id: str = "byzantine",
                 max_update_bytes: int = 2 * 1024**3):
        super().__init__(bus, store, [topics.UPDATES_CLIPPED, topics.ROUNDS], group_id)
        self.max_update_bytes = max_update_bytes
        self.jobs: dict[str, _Job | None] = {}

    async def handle(self, record: Record) -> None:
        if record.topic == topics.ROUNDS:
            await self._on_round_event(record)
        else:
            await self._on_update(record)

    # -- jobs ------------------------------------------------------------------------------
    async def _job(self, job_id: str) -> _Job | None:
        if job_id not in self.jobs:
            row = await self.store.get_job(job_id)
            if row is None:
                return None
            spec = JobSpec.model_validate(row["spec"])
            if spec.robust.aggregator == "none":
                self.jobs[job_id] = None
                return None
            extra: dict[str, Any]
            history, extra, next_round = ClientHistory(), {}, 1
            saved = await self.store.load_robust_state(job_id)
            if saved is not None:
                next_round, blob = saved
                history, extra = _unpack_state(blob)
            self.jobs[job_id] = _Job(spec, job_layout(row), history,
                                     _reputation(spec, extra), next_round)
        return self.jobs[job_id]

    # -- inputs ----------------------------------------------------------------------------
    async def _on_update(self, record: Record) -> None:
        try:
            meta = peek_update_meta(record.value, self.max_update_bytes)
        except WireError:
            self.settle(record)  # the aggregator refuses it and says why
            return
        job_id, number, client = meta["job_id"], meta["round"], meta["client_id"]
        job = await self._job(job_id)
        if job is None:  # no robust rule: the aggregator counts it as it arrives
            self.settle(record)
            return
        if number < job.next_round - 1:
            self.settle(record)  # an old round's replay: judged already
            return
        pending = job.rounds.setdefault(number, _Pending())
        if pending.judged:
            self.settle(record)  # read again after a rebalance: judged already
            return
        pending.held.append(position_of(record))
        if client not in pending.updates and client not in pending.invalid:
            try:
                update = decode_update(record.value, job.layout, max_bytes=self.max_update_bytes,
                                       verify_checksum=False)
                pending.updates[client] = (update.delta, update.num_examples,
                                           float(update.metrics.get("train_loss", math.nan)))
            except WireError as exc:
                pending.invalid[client] = f"{exc.code}: {exc}"
        await self._maybe_judge(job_id, job, number)

    async def _on_round_event(self, record: Record) -> None:
        event = events.parse_round_event(record.value)
        job_id = event["job"]
        if event["type"] == events.JOB_FINISHED:
            self.jobs.pop(job_id, None)
        elif event["type"] == events.CLOSING:
            job = await self._job(job_id)
            if job is not None and event["round"] >= job.next_round - 1:
                pending = job.rounds.setdefault(event["round"], _Pending())
                pending.closing = set(event.get("uploaded", []))
                pending.held.append(position_of(record))
                await self._maybe_judge(job_id, job, event["round"])
                return
        self.settle(record)

    # -- judging ---------------------------------------------------------------------------
    async def _maybe_judge(self, job_id: str, job: _Job, number: int) -> None:
        pending = job.rounds.get(number)
        if pending is None or pending.closing is None or pending.judged:
            return
        if not all(c in pending.updates or c in pending.invalid for c in pending.closing):
            return  # announced uploads still on their way
        clients = sorted(pending.updates)
        # The history this round starts from is the stored one: the snapshot taken before
        # the round when judging it again, or what another replica left after the round
        # before (replicas judge a job's rounds in turn: byzantine_replicas).
        saved = await self.store.load_robust_state(job_id)
        if saved is not None and saved[0] > number:
            # judged already (a redelivery after a restart or a rebalance): the stored
            # verdicts again, not a second judgement from the history after the round
            stored = await self._stored_verdicts(job_id, number, pending.closing)
            if stored is not None:
                await self._publish_verdicts(job_id, job, number, stored)
                self.settle(*pending.held)
                job.rounds.pop(number, None)
                return
        if saved is not None:
            job.history, extra = _unpack_state(saved[1])
            job.reputation = _reputation(job.spec, extra)
            job.next_round = max(job.next_round, saved[0])  # never saved backwards
        if saved is None or saved[0] < number:
            await self.store.save_robust_state(job_id, number, _pack_state(job))
        verdicts = await self._judge(job_id, job, number, clients, pending)
        for client, reason in pending.invalid.items():
            verdicts.append({"client": client, "weight": 0.0, "scale": 1.0,
                             "reason": f"invalid: {reason}", "scores": {}, "flags": []})
        flagged = {v["client"]: v["reason"] for v in verdicts
                   if v["weight"] <= 0 or v["flags"]}
        audits: list[tuple[str, str, dict[str, Any]]] = [
            ("byzantine.refused", "byzantine", {"round": number, "client_id": v["client"],
                                                "reason": v["reason"], "scores": v["scores"]})
            for v in verdicts if v["weight"] <= 0]
        fraction = len(flagged) / max(len(verdicts), 1)
        observe_verdicts(job_id, len(verdicts), sum(1 for v in verdicts if v["weight"] <= 0),
                         len(flagged))
        alert = fraction > job.spec.robust.alert_fraction
        if alert:
            audits.append(("byzantine.alert", "byzantine", {
                "round": number, "flagged": sorted(flagged), "fraction": fraction,
                "threshold": job.spec.robust.alert_fraction}))
        await self.store.record_verdicts(job_id, number, verdicts, audits)
        job.next_round = max(job.next_round, number + 1)
        await self.store.save_robust_state(job_id, job.next_round, _pack_state(job))
        await self._publish_verdicts(job_id, job, number, verdicts)
        if alert:
            await self.bus.publish(topics.ALERTS, events.alert_message(
                job_id, number, flagged=sorted(flagged), fraction=fraction,
                threshold=job.spec.robust.alert_fraction, reasons=flagged),
                key=job_id.encode())
            self.log.warning("job %s round %d: %.0f%% of updates flagged", job_id, number,
                             100 * fraction)
        self.log.info("%s: judged job %s round %d: %d verdicts, %d flagged", self.name,
                      job_id, number, len(verdicts), len(flagged))
        self.settle(*pending.held)
        job.rounds.pop(number, None)

    async def _publish_verdicts(self, job_id: str, job: _Job, number: int,
                                verdicts: list[dict[str, Any]]) -> None:
        for v in verdicts:
            await self.bus.publish(topics.VERDICTS, events.verdict_message(
                job_id, number, v["client"], weight=v["weight"], reason=v["reason"],
                scores=v.get("scores") or {}, scale=v.get("scale", 1.0)),
                key=update_key(job.spec, job_id, number, v["client"]))

    async def _stored_verdicts(self, job_id: str, number: int, clients: set[str]
                               ) -> list[dict[str, Any]] | None:
        """The verdicts recorded for round ``number``, when every client has one."""
        rows: dict[str, dict[str, Any]] = {}
        for p in await self.store.list_participants(job_id, number):
            verdict = (p["metrics"] or {}).get("verdict")
            if isinstance(verdict, dict):
                rows[p["client_id"]] = verdict
        if any(c not in rows for c in clients):
            return None
        return [{"client": c, **rows[c]} for c in sorted(clients)]

    async def _judge(self, job_id: str, job: _Job, number: int, clients: list[str],
                     pending: _Pending) -> list[dict[str, Any]]:
        if not clients:
            return []
        x = np.stack([pending.updates[c][0] for c in clients])
        examples = np.array([pending.updates[c][1] for c in clients], dtype=np.float64)
        root = None
        if job.spec.robust.aggregator == "fltrust":
            # g₀ from the model this round trained on: the newest released checkpoint.
            ckpt = await self.store.latest_checkpoint(job_id)
            assert ckpt is not None
            if job.root is None:
                from tsfl.robust.root import RootTrainer  # torch: FLTrust jobs only

                job.root = await asyncio.to_thread(RootTrainer, job.spec)
            root = await asyncio.to_thread(job.root.root_update, ckpt["vector"], number)
        losses = np.array([pending.updates[c][2] for c in clients], dtype=np.float64)
        return judge_round(job.spec.robust, job.history, job.reputation, clients, x, examples,
                           root, losses)


def _pack_state(job: _Job) -> bytes:
    """Reputation and norm averages (JSON) + the client history (npz), length-prefixed."""
    head = json.dumps(job.reputation.state()).encode()
    return len(head).to_bytes(8, "little") + head + job.history.to_bytes()


def _reputation(spec: JobSpec, extra: dict[str, Any]) -> Reputation:
    r = spec.robust
    return Reputation(r.reputation_ema, r.reputation_threshold, scores=dict(
        extra.get("reputation", {})), norm_avg=dict(extra.get("norm_avg", {})),
        loss_avg=dict(extra.get("loss_avg", {})))


def _unpack_state(data: bytes) -> tuple[ClientHistory, dict[str, Any]]:
    n = int.from_bytes(data[:8], "little")
    extra = json.loads(data[8:8 + n])
    return ClientHistory.from_bytes(data[8 + n:]), extra
