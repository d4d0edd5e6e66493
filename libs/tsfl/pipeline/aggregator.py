"""The aggregator role: ``tsfl.rounds`` + ``tsfl.updates.raw`` → ``tsfl.aggregates``.

Stages: decode → validate → fold (streaming, O(P)) → finalize (server optimizer).
The new model and the strategy's state are checkpointed in the store before the
result is announced. Offsets of the round's updates are committed only after
that, so a restarted aggregator re-reads and re-folds the open round (idempotent
by client) and nothing is lost or counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record
from tsfl.config import JobSpec
from tsfl.core.fold import RoundFold
from tsfl.core.layout import ParamLayout
from tsfl.pipeline import events
from tsfl.pipeline.role import BusRole
from tsfl.storage.store import Store
from tsfl.strategies import Strategy, build_strategy
from tsfl.wire.envelope import WireError
from tsfl.wire.messages import decode_update, peek_update_meta


@dataclass
class _RoundFold:
    number: int
    fold: RoundFold
    seen_clients: set[str] = field(default_factory=set)
    rejected: dict[str, str] = field(default_factory=dict)  # refused on arrival
    weights: dict[str, int] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    closing: set[str] | None = None
    held: dict[tuple[str, int], Record] = field(default_factory=dict)  # to commit at close
    close_record: Record | None = None

    def seen(self, client: str) -> bool:
        return client in self.seen_clients


@dataclass
class _JobState:
    job_id: str
    spec: JobSpec
    layout: ParamLayout
    strategy: Strategy
    version: int
    vector: np.ndarray
    fold: _RoundFold | None = None


class Aggregator(BusRole):
    name = "aggregator"

    def __init__(self, bus: Bus, store: Store, *, group_id: str = "aggregator",
                 max_update_bytes: int = 2 * 1024**3):
        super().__init__(bus, store, [topics.ROUNDS, topics.UPDATES_RAW], group_id)
        self.max_update_bytes = max_update_bytes
        self.jobs: dict[str, _JobState] = {}

    async def handle(self, record: Record) -> None:
        if record.topic == topics.ROUNDS:
            await self._on_round_event(record)
        else:
            await self._on_update(record)

    # -- control ---------------------------------------------------------------------------
    async def _on_round_event(self, record: Record) -> None:
        event = events.parse_round_event(record.value)
        job_id, kind = event["job"], event["type"]
        if kind == events.JOB_STARTED:
            await self._load_job(job_id)
            await self.consumer.commit(record)
        elif kind == events.COLLECTING:
            state = self.jobs.get(job_id) or await self._load_job(job_id)
            self._ensure_fold(state, event["round"])
            await self.consumer.commit(record)
        elif kind == events.CLOSING:
            state = self.jobs.get(job_id) or await self._load_job(job_id)
            if event["round"] <= state.version:  # finalized before a restart: re-announce
                await self._announce_existing(state, event["round"])
                await self.consumer.commit(record)
                return
            fold = self._ensure_fold(state, event["round"])
            fold.closing = set(event.get("uploaded", []))
            fold.close_record = record
            await self._maybe_finalize(state)
        else:
            if kind == events.JOB_FINISHED:
                self.jobs.pop(job_id, None)
            await self.consumer.commit(record)

    async def _load_job(self, job_id: str) -> _JobState:
        row = await self.store.get_job(job_id)
        if row is None:
            raise LookupError(f"job {job_id!r} is not in the store")
        spec = JobSpec.model_validate(row["spec"])
        layout = ParamLayout.from_json(row["layout"])
        strategy = build_strategy(spec.strategy.name, **spec.strategy.params())
        ckpt = await self.store.latest_checkpoint(job_id)
        if ckpt is None:
            raise LookupError(f"job {job_id!r} has no initial checkpoint")
        strategy.load_state(ckpt["strategy_state"])
        state = _JobState(job_id, spec, layout, strategy, ckpt["version"], ckpt["vector"])
        self.jobs[job_id] = state
        return state

    def _ensure_fold(self, state: _JobState, number: int) -> _RoundFold:
        if state.fold is None or state.fold.number != number:
            state.fold = _RoundFold(number, RoundFold(state.layout.total_size))
        return state.fold

    # -- updates ---------------------------------------------------------------------------
    async def _on_update(self, record: Record) -> None:
        try:
            meta = peek_update_meta(record.value, self.max_update_bytes)
        except WireError as exc:
            self.log.warning("unreadable update at %s@%d: %s", record.topic, record.offset, exc)
            await self.consumer.commit(record)
            return
        state = self.jobs.get(meta["job_id"])
        if state is None:
            state = await self._load_job(meta["job_id"])
        if meta["round"] <= state.version or (state.fold and meta["round"] < state.fold.number):
            await self.consumer.commit(record)  # a round already aggregated: replay
            return
        fold = self._ensure_fold(state, meta["round"])
        fold.held[(record.topic, record.partition)] = record
        client = meta["client_id"]
        if fold.seen(client):
            return  # duplicate delivery: counted once already
        fold.seen_clients.add(client)
        try:
            # The coordinator verified the checksum at the edge (the bus hop is covered by
            # Kafka's record CRC32C), and RoundFold checks finiteness at close, so decoding
            # here reads nothing but the header.
            update = decode_update(record.value, state.layout, max_bytes=self.max_update_bytes,
                                   verify_checksum=False, allow_nonfinite=True)
            if update.model_version != state.version:
                raise WireError("stale", f"trained on model v{update.model_version}, "
                                         f"the round is on v{state.version}")
        except WireError as exc:
            fold.rejected[client] = f"{exc.code}: {exc}"
            await self.store.append_audit(state.job_id, "update.rejected",
                                          {"round": fold.number, "client_id": client,
                                           "reason": fold.rejected[client]}, actor="aggregator")
        else:
            fold.fold.add(client, update.delta, float(update.num_examples))
            fold.weights[client] = update.num_examples
            if "train_loss" in update.metrics:
                fold.losses[client] = update.metrics["train_loss"]
        await self._maybe_finalize(state)

    # -- close -----------------------------------------------------------------------------
    async def _maybe_finalize(self, state: _JobState) -> None:
        fold = state.fold
        if fold is None or fold.closing is None:
            return
        if any(not fold.seen(c) for c in fold.closing):
            return  # some announced updates are still on their way
        result = fold.fold.close()
        rejected = {**fold.rejected, **{str(k): v for k, v in result.rejected.items()}}
        for client in result.rejected:
            await self.store.append_audit(state.job_id, "update.rejected",
                                          {"round": fold.number, "client_id": client,
                                           "reason": result.rejected[client]},
                                          actor="aggregator")
        accepted = [str(c) for c in result.accepted]
        examples = sum(fold.weights[c] for c in accepted)
        with_loss = [c for c in accepted if c in fold.losses]
        train_loss = (sum(fold.losses[c] * fold.weights[c] for c in with_loss)
                      / sum(fold.weights[c] for c in with_loss)) if with_loss else None
        new_vector = (state.strategy.aggregate_fit(state.vector, result.mean)
                      if result.mean is not None else None)
        if new_vector is not None:
            version = state.version + 1
            await self.store.save_checkpoint(state.job_id, version, fold.number,
                                             state.layout.digest, new_vector,
                                             state.strategy.state())
            state.vector, state.version = new_vector, version
            msg = events.aggregate_message(
                state.job_id, fold.number, version, ok=True, accepted=accepted,
                rejected=rejected, num_examples=examples, train_loss=train_loss,
                vector=new_vector)
        else:
            msg = events.aggregate_message(
                state.job_id, fold.number, state.version, ok=False, accepted=[],
                rejected=rejected, num_examples=0, train_loss=None,
                reason=result.error or "no valid update to aggregate")
        await self.bus.publish(topics.AGGREGATES, msg, key=topics.round_key(state.job_id,
                                                                            fold.number))
        await self._commit_fold(fold)
        state.fold = None

    async def _commit_fold(self, fold: _RoundFold) -> None:
        for record in fold.held.values():
            await self.consumer.commit(record)
        if fold.close_record is not None:
            await self.consumer.commit(fold.close_record)

    async def _announce_existing(self, state: _JobState, number: int) -> None:
        """Re-send the result of a round whose checkpoint exists (restart after save)."""
        ckpt = await self.store.latest_checkpoint(state.job_id)
        if ckpt is None or ckpt["round"] != number:
            return
        parts = await self.store.list_participants(state.job_id, number)
        accepted = [p["client_id"] for p in parts if p["status"] in ("uploaded", "accepted")]
        msg = events.aggregate_message(state.job_id, number, ckpt["version"], ok=True,
                                       accepted=accepted, rejected={},
                                       num_examples=sum(p["num_examples"] or 0 for p in parts
                                                        if p["client_id"] in accepted),
                                       train_loss=None, vector=ckpt["vector"])
        await self.bus.publish(topics.AGGREGATES, msg, key=topics.round_key(state.job_id, number))

