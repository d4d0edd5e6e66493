"""The aggregator role: ``tsfl.rounds`` + ``tsfl.updates.raw`` → ``tsfl.aggregates``.

Stages: decode → validate → fold (streaming, O(P)) → finalize (server optimizer).
The new model and the strategy's state are checkpointed in the store before the
result is announced. Offsets of the round's updates are committed only after
that, so a restarted aggregator re-reads and re-folds the open round (idempotent
by client) and nothing is lost or counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import numpy as np

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record
from tsfl.config import JobSpec
from tsfl.core.accumulator import WeightedAccumulator
from tsfl.core.layout import ParamLayout
from tsfl.pipeline import events
from tsfl.storage.store import Store
from tsfl.strategies import Strategy, build_strategy
from tsfl.wire.envelope import WireError
from tsfl.wire.messages import decode_update, peek_update_meta

log = logging.getLogger("tsfl.aggregator")


@dataclass
class _RoundFold:
    number: int
    acc: WeightedAccumulator
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    loss_sum: float = 0.0
    loss_weight: int = 0
    num_examples: int = 0
    closing: set[str] | None = None
    held: dict[tuple[str, int], Record] = field(default_factory=dict)  # to commit at close
    close_record: Record | None = None

    def seen(self, client: str) -> bool:
        return client in self.rejected or client in self._accepted_set

    def __post_init__(self) -> None:
        self._accepted_set: set[str] = set()


@dataclass
class _JobState:
    job_id: str
    spec: JobSpec
    layout: ParamLayout
    strategy: Strategy
    version: int
    vector: np.ndarray
    fold: _RoundFold | None = None


class Aggregator:
    def __init__(self, bus: Bus, store: Store, *, group_id: str = "aggregator",
                 max_update_bytes: int = 2 * 1024**3):
        self.bus = bus
        self.store = store
        self.group_id = group_id
        self.max_update_bytes = max_update_bytes
        self.jobs: dict[str, _JobState] = {}
        self._task: asyncio.Task[None] | None = None
        self._consumer = None

    async def start(self) -> None:
        self._consumer = self.bus.consumer([topics.ROUNDS, topics.UPDATES_RAW], self.group_id)
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="tsfl-aggregator")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer:
            await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            record = await self._consumer.getone()
            if record is None:
                continue
            try:
                if record.topic == topics.ROUNDS:
                    await self._on_round_event(record)
                else:
                    await self._on_update(record)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad record must not take the service down
                log.exception("aggregator failed on %s@%d", record.topic, record.offset)
                await self._consumer.commit(record)

    # -- control ---------------------------------------------------------------------------
    async def _on_round_event(self, record: Record) -> None:
        assert self._consumer is not None
        event = events.parse_round_event(record.value)
        job_id, kind = event["job"], event["type"]
        if kind == events.JOB_STARTED:
            await self._load_job(job_id)
            await self._consumer.commit(record)
        elif kind == events.COLLECTING:
            state = self.jobs.get(job_id) or await self._load_job(job_id)
            self._ensure_fold(state, event["round"])
            await self._consumer.commit(record)
        elif kind == events.CLOSING:
            state = self.jobs.get(job_id) or await self._load_job(job_id)
            if event["round"] <= state.version:  # finalized before a restart: re-announce
                await self._announce_existing(state, event["round"])
                await self._consumer.commit(record)
                return
            fold = self._ensure_fold(state, event["round"])
            fold.closing = set(event.get("uploaded", []))
            fold.close_record = record
            await self._maybe_finalize(state)
        else:
            if kind == events.JOB_FINISHED:
                self.jobs.pop(job_id, None)
            await self._consumer.commit(record)

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
            state.fold = _RoundFold(number, WeightedAccumulator(state.layout.total_size))
        return state.fold

    # -- updates ---------------------------------------------------------------------------
    async def _on_update(self, record: Record) -> None:
        assert self._consumer is not None
        try:
            meta = peek_update_meta(record.value, self.max_update_bytes)
        except WireError as exc:
            log.warning("unreadable update at %s@%d: %s", record.topic, record.offset, exc)
            await self._consumer.commit(record)
            return
        state = self.jobs.get(meta["job_id"])
        if state is None:
            state = await self._load_job(meta["job_id"])
        if meta["round"] <= state.version or (state.fold and meta["round"] < state.fold.number):
            await self._consumer.commit(record)  # a round already aggregated: replay
            return
        fold = self._ensure_fold(state, meta["round"])
        fold.held[(record.topic, record.partition)] = record
        client = meta["client_id"]
        if fold.seen(client):
            return  # duplicate delivery: counted once already
        try:
            update = decode_update(record.value, state.layout, max_bytes=self.max_update_bytes)
            if update.model_version != state.version:
                raise WireError("stale", f"trained on model v{update.model_version}, "
                                         f"the round is on v{state.version}")
        except WireError as exc:
            fold.rejected[client] = f"{exc.code}: {exc}"
            await self.store.append_audit(state.job_id, "update.rejected",
                                          {"round": fold.number, "client_id": client,
                                           "reason": fold.rejected[client]}, actor="aggregator")
        else:
            fold.acc.add(update.delta, float(update.num_examples))
            fold.accepted.append(client)
            fold._accepted_set.add(client)
            fold.num_examples += update.num_examples
            if "train_loss" in update.metrics:
                fold.loss_sum += update.metrics["train_loss"] * update.num_examples
                fold.loss_weight += update.num_examples
        await self._maybe_finalize(state)

    # -- close -----------------------------------------------------------------------------
    async def _maybe_finalize(self, state: _JobState) -> None:
        fold = state.fold
        if fold is None or fold.closing is None:
            return
        if any(not fold.seen(c) for c in fold.closing):
            return  # some announced updates are still on their way
        accepted = list(fold.accepted)  # only announced uploads ever reach the raw topic
        rejected = dict(fold.rejected)
        train_loss = fold.loss_sum / fold.loss_weight if fold.loss_weight else None
        new_vector = (state.strategy.aggregate_fit(state.vector, fold.acc.mean_inplace())
                      if accepted else None)
        if new_vector is not None:
            version = state.version + 1
            await self.store.save_checkpoint(state.job_id, version, fold.number,
                                             state.layout.digest, new_vector,
                                             state.strategy.state())
            state.vector, state.version = new_vector, version
            msg = events.aggregate_message(
                state.job_id, fold.number, version, ok=True, accepted=accepted,
                rejected=rejected, num_examples=fold.num_examples, train_loss=train_loss)
        else:
            msg = events.aggregate_message(
                state.job_id, fold.number, state.version, ok=False, accepted=[],
                rejected=rejected, num_examples=0, train_loss=None,
                reason="no valid update to aggregate")
        await self.bus.publish(topics.AGGREGATES, msg, key=topics.round_key(state.job_id,
                                                                            fold.number))
        await self._commit_fold(fold)
        state.fold = None

    async def _commit_fold(self, fold: _RoundFold) -> None:
        assert self._consumer is not None
        for record in fold.held.values():
            await self._consumer.commit(record)
        if fold.close_record is not None:
            await self._consumer.commit(fold.close_record)

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
                                       train_loss=None)
        await self.bus.publish(topics.AGGREGATES, msg, key=topics.round_key(state.job_id, number))

