"""The aggregator as N replicas of one consumer group: hierarchical aggregation.

Each replica reads the update topics (``tsfl.updates.clipped``, ``tsfl.updates.direct``,
``tsfl.verdicts``) as a member of the shared group ``aggregator``, so the broker splits
their partitions among the replicas (range by range: a replica owns the same partition
indices of each, so an update and its verdict — same key — reach the same replica), and
reads ``tsfl.rounds`` whole, in a group of its own (:class:`BroadcastReader`): every
replica sees every CLOSING. At CLOSING a replica waits for the uploaded clients whose
keys fall in its partitions (:func:`tsfl.pipeline.routing.client_partition`: the
producer's partitioner), folds them exactly as the single aggregator does, and publishes a
*partial* aggregate covering its partitions (:mod:`tsfl.pipeline.partials`); the release
stage merges the partials once they cover every partition. One replica owning every
partition publishes one partial covering the round (the single-aggregator result).

Offsets: a replica holds (does not commit) a round's update and verdict records until the
round is *done* — PUBLISHED or FAILED on ``tsfl.rounds`` — not merely until its partial is
out. So when a replica dies (kill -9) at any point, the replica that takes over its
partitions after the rebalance reads all of their records of every unfinished round
again, folds them and publishes the partial (again, if it was out already: the merge
counts a partial once per (job, round, partitions)). A rebalance that changes a
replica's partitions drops its folds: after a rebalance every member reads its
partitions again from the committed offsets.

Jobs whose aggregate needs the whole round at once (median, trimmed mean, Bulyan) are
keyed by round (:mod:`tsfl.pipeline.routing`): one replica folds all of such a round, the
others publish empty partials for their partitions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record, position_of
from tsfl.bus.partitioning import owned_indices
from tsfl.pipeline import events
from tsfl.pipeline.aggregator import Aggregator, _JobState, _Round
from tsfl.pipeline.partials import PartialFold, partial_message
from tsfl.pipeline.replica import ReplicaMember
from tsfl.pipeline.round_metrics import observe_aggregation
from tsfl.pipeline.routing import client_partition
from tsfl.storage.store import Store


@dataclass
class _PartRound(_Round):
    parts: frozenset[int] = frozenset()  # the partitions this fold covers
    mine: set[str] | None = None  # the uploaded clients in those partitions
    published: bool = False


@dataclass
class _Closing:
    round: int
    uploaded: frozenset[str]
    at: float
    record: Record = field(repr=False)


class PartitionedAggregator(ReplicaMember, Aggregator):
    """An aggregator replica (see the module docstring)."""

    def __init__(self, bus: Bus, store: Store, *, group_id: str | None = None,
                 max_update_bytes: int = 2 * 1024**3, replica: str | None = None):
        super().__init__(bus, store, group_id=group_id, max_update_bytes=max_update_bytes)
        self._join_replicas(replica)
        self._closings: dict[str, _Closing] = {}

    def group_topics(self) -> tuple[str, ...]:
        return self.update_topics  # tsfl.rounds: read whole, by self.rounds

    @property
    def parts(self) -> frozenset[int]:
        """The partition indices of the update topics this replica owns now."""
        return self._parts or frozenset()

    async def _sync_assignment(self) -> None:
        """Follow a rebalance: drop the folds, which the partitions' records (re-read
        from the committed offsets) rebuild; publish what is complete already (a round
        with no client in the new partitions)."""
        if self._consumer is None:
            return
        parts, aligned = owned_indices(self._consumer.assignment(), self.update_topics)
        if parts == self._parts:
            return
        if not aligned:
            self._warn("aligned", "%s %s: the update topics are not co-partitioned in "
                       "this assignment; folding only the indices owned in all of them",
                       self.name, self.replica)
        self.log.info("%s %s: partitions %s (were %s)", self.name, self.replica,
                      sorted(parts), sorted(self._parts) if self._parts is not None else "-")
        self._parts = parts
        self._offsets.retain(self._consumer.assignment())
        for held in self.jobs.values():
            held.round = None  # not settled: its records are read again
        for job_id, closing in list(self._closings.items()):
            state = self.jobs.get(job_id)
            if state is not None and parts and await self._round(state, closing.round):
                await self._maybe_finalize(state)

    # -- inputs ----------------------------------------------------------------------------
    async def handle(self, record: Record) -> None:
        async with self._lock:
            await self._sync_assignment()
            if record.partition not in self.parts:  # fetched before a rebalance took it
                self._offsets.forget(record.topic, record.partition)  # its owner reads it
                return
            await super().handle(record)

    async def _on_broadcast(self, record: Record) -> None:
        async with self._lock:
            await self._on_round(record)

    async def _on_round(self, record: Record) -> None:
        event = events.parse_round_event(bytes(record.value))
        job_id, kind, number = event["job"], event["type"], event["round"]
        if kind == events.JOB_FINISHED:
            self._round_done(job_id, None)
            self.jobs.pop(job_id, None)
            self._elsewhere.discard(job_id)
        elif kind == events.JOB_STARTED:
            await self._job(job_id)
        elif kind in (events.PUBLISHED, events.ROUND_FAILED):
            self._round_done(job_id, number)
        elif kind == events.CLOSING:
            state = await self._job(job_id)
            known = self._closings.get(job_id)
            if known is not None and known.round == number:
                # The same CLOSING read again (the reader restarted from its committed
                # position: the new copy is the one its bookkeeping knows, so the one
                # held), re-announced by a restarted coordinator (a newer offset: hold
                # that one, let the older go), or a retry after a failure: finish it.
                if known.record.offset != record.offset:
                    self.rounds.settle(known.record)
                known.record = position_of(record)
                if state is not None and await self._round(state, number) is not None:
                    await self._maybe_finalize(state)
                return
            if state is not None and number > state.closed and (
                    known is None or known.round < number):
                if known is not None:
                    self.rounds.settle(known.record)
                self._closings[job_id] = _Closing(
                    number, frozenset(event.get("uploaded", [])), time.monotonic(),
                    position_of(record))
                rnd = await self._round(state, number)
                if rnd is not None:
                    await self._maybe_finalize(state)
                return  # held until the round is done
        self.rounds.settle(record)

    def _round_done(self, job_id: str, number: int | None) -> None:
        """The round (None: every round of the job) is released or failed: settle what
        was held for it."""
        state = self.jobs.get(job_id)
        if state is not None:
            if number is not None:
                state.closed = max(state.closed, number)
            if state.round is not None and (number is None or state.round.number <= number):
                self.settle(*state.round.held)
                state.round = None
        closing = self._closings.get(job_id)
        if closing is not None and (number is None or closing.round <= number):
            self.rounds.settle(closing.record)
            del self._closings[job_id]

    async def _round(self, state: _JobState, number: int) -> _Round | None:
        if number <= state.closed or (state.round is not None and number < state.round.number):
            return None
        if state.round is None or state.round.number != number:
            if state.round is not None:  # a newer round: the older one is over
                self.settle(*state.round.held)
            meta = await self.store.latest_checkpoint_meta(state.job_id)
            if meta is not None:
                state.version = meta[0]
            state.round = _PartRound(number, self._new_fold(state), parts=self.parts)
        closing = self._closings.get(state.job_id)
        if closing is not None and closing.round == number and state.round.closing is None:
            state.round.closing, state.round.closing_at = set(closing.uploaded), closing.at
        return state.round

    # -- close -----------------------------------------------------------------------------
    def _partitions(self, state: _JobState) -> int:
        topic = topics.screened_topic(state.spec.robust.aggregator)
        count = self._consumer.partition_count(topic) if self._consumer else None
        return count or topics.TOPICS[topic]

    async def _maybe_finalize(self, state: _JobState) -> None:
        rnd = state.round
        if not isinstance(rnd, _PartRound) or rnd.closing is None or rnd.published:
            return
        if not rnd.parts or rnd.parts != self._parts:
            return  # no partitions (yet), or a rebalance is being followed
        n = self._partitions(state)
        if rnd.mine is None:
            rnd.mine = {c for c in rnd.closing if client_partition(
                state.spec, state.job_id, rnd.number, c, n) in rnd.parts}
        if not all(rnd.settled(c) for c in rnd.mine):
            return  # some announced updates or verdicts are still on their way
        result = rnd.fold.close()
        for client, reason in result.rejected.items():
            await self._reject(state, rnd, str(client), reason)
        accepted = [str(c) for c in result.accepted] if result.mean is not None else []
        with_loss = [c for c in accepted if c in rnd.losses]
        loss_examples = sum(rnd.weights[c] for c in with_loss)
        partial = PartialFold(
            state.job_id, rnd.number, state.version, state.layout.digest, rnd.parts, n,
            set(rnd.closing), sorted(rnd.mine), self.replica, accepted, dict(rnd.rejected),
            sum(rnd.weights[c] for c in accepted),
            (sum(rnd.losses[c] * rnd.weights[c] for c in with_loss) / loss_examples
             if with_loss else None), loss_examples, result.mean,
            result.total_weight if result.mean is not None else 0.0,
            "uniform" if state.uniform_weights else "examples",
            sum(1 for c in accepted if c in rnd.unclipped),
            error=None if result.mean is not None or not rnd.mine else
            (result.error or "no valid update to aggregate"))
        if state.spec.strategy.mode == "async" and rnd.mine:  # which model each trained on
            await self.store.append_audit(state.job_id, "fedbuff.folded", {
                "round": rnd.number, "model_version": state.version,
                "partitions": sorted(rnd.parts),
                "staleness": sorted(rnd.staleness.get(c, 0) for c in accepted)},
                actor="aggregator")
        await self.bus.publish(topics.AGGREGATES, partial_message(partial),
                               key=topics.round_key(state.job_id, rnd.number))
        observe_aggregation(state.job_id, time.monotonic() - rnd.closing_at)
        rnd.published = True  # its records stay held until the round is done


__all__ = ["PartitionedAggregator"]
