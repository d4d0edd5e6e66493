"""The Byzantine-detection stage as N replicas of one consumer group.

A robust rule judges a round's updates against each other, so a replica must see a whole
round: updates of a job with a robust rule are keyed ``job:round``
(:mod:`tsfl.pipeline.routing`), so each round lands on one partition of
``tsfl.updates.clipped`` and the replica owning that partition judges it. Replicas split
the work by round and by job.

Each replica reads ``tsfl.updates.clipped`` as a member of the shared group
``byzantine`` and ``tsfl.rounds`` whole, in a group of its own
(:class:`~tsfl.pipeline.broadcast.BroadcastReader`): every replica sees every CLOSING and
keeps it until the round is done (PUBLISHED or FAILED), whether or not it owns the round
now — a rebalance may hand it the round's partition later, and the updates (not
committed until the round is judged) are then read again from the committed offsets.

Client history (WFAgg's temporal filter, reputation) lives in the store, not in a
replica's memory: the replica that judges round r starts from what the judge of round
r-1 saved (:class:`~tsfl.pipeline.byzantine.Byzantine` reads it before each judgement),
so verdicts do not depend on which replica judged which round.
"""

from __future__ import annotations

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record, position_of
from tsfl.bus.partitioning import owned_indices
from tsfl.pipeline import events
from tsfl.pipeline.byzantine import Byzantine, _Job, _Pending
from tsfl.pipeline.replica import ReplicaMember
from tsfl.pipeline.routing import client_partition
from tsfl.storage.store import Store


class ReplicatedByzantine(ReplicaMember, Byzantine):
    """A byzantine replica (see the module docstring)."""

    def __init__(self, bus: Bus, store: Store, *, group_id: str = "byzantine",
                 max_update_bytes: int = 2 * 1024**3, replica: str | None = None):
        super().__init__(bus, store, group_id=group_id, max_update_bytes=max_update_bytes)
        self._join_replicas(replica)

    def group_topics(self) -> tuple[str, ...]:
        return (topics.UPDATES_CLIPPED,)  # tsfl.rounds: read whole, by self.rounds

    def settle(self, *records: Record) -> None:
        """Records of ``tsfl.rounds`` are the broadcast reader's; the rest the group's."""
        super().settle(*(r for r in records if r.topic != topics.ROUNDS))
        self.rounds.settle(*(r for r in records if r.topic == topics.ROUNDS))

    # -- partitions ------------------------------------------------------------------------
    async def _sync_assignment(self) -> None:
        """Follow a rebalance: drop the updates held (their partitions' records are read
        again from the committed offsets), keep the CLOSINGs, judge what is now ours."""
        if self._consumer is None:
            return
        parts, _ = owned_indices(self._consumer.assignment(), (topics.UPDATES_CLIPPED,))
        if parts == self._parts:
            return
        self.log.info("%s %s: partitions %s (were %s)", self.name, self.replica,
                      sorted(parts), sorted(self._parts) if self._parts is not None else "-")
        self._parts = parts
        self._offsets.retain(self._consumer.assignment())
        for job_id, job in list(self.jobs.items()):
            if job is None:
                continue
            for number, pending in list(job.rounds.items()):
                pending.updates.clear()
                pending.invalid.clear()
                pending.held = [r for r in pending.held if r.topic == topics.ROUNDS]
                await self._maybe_judge(job_id, job, number)

    def _owns(self, job_id: str, job: _Job, number: int) -> bool:
        if not self._parts:
            return False
        count = (self._consumer.partition_count(topics.UPDATES_CLIPPED)
                 if self._consumer else None) or topics.TOPICS[topics.UPDATES_CLIPPED]
        return client_partition(job.spec, job_id, number, "", count) in self._parts

    # -- inputs ----------------------------------------------------------------------------
    async def handle(self, record: Record) -> None:
        async with self._lock:
            await self._sync_assignment()
            if self._parts is not None and record.partition not in self._parts:
                # fetched before a rebalance took the partition: its owner reads it
                self._offsets.forget(record.topic, record.partition)
                return
            await self._on_update(record)

    async def _on_broadcast(self, record: Record) -> None:
        async with self._lock:
            event = events.parse_round_event(bytes(record.value))
            job_id, kind = event["job"], event["type"]
            if kind in (events.PUBLISHED, events.ROUND_FAILED):
                self._round_done(job_id, event["round"])
            elif kind == events.JOB_FINISHED:
                self._round_done(job_id, None)
            elif kind == events.CLOSING:
                job = await self._job(job_id)
                pending = job.rounds.get(event["round"]) if job is not None else None
                if pending is not None and pending.closing is not None:
                    # the same CLOSING read again (the reader restarted from its committed
                    # position: hold the new copy, the one its bookkeeping knows),
                    # re-announced by a restarted coordinator (a newer offset: hold that
                    # one, let the older go), or a retry after a failure: finish it
                    older = [r for r in pending.held if r.topic == topics.ROUNDS]
                    self.settle(*(r for r in older if r.offset != record.offset))
                    pending.held = [r for r in pending.held if r.topic != topics.ROUNDS]
                    pending.held.append(position_of(record))
                    assert job is not None
                    await self._maybe_judge(job_id, job, event["round"])
                    return
            await self._on_round_event(record)

    def _round_done(self, job_id: str, number: int | None) -> None:
        """The round (None: every round) is released or failed: let go of its CLOSING."""
        job = self.jobs.get(job_id)
        if job is None:
            return
        for n, pending in list(job.rounds.items()):
            if number is None or n <= number:
                self.settle(*pending.held)
                del job.rounds[n]

    # -- judging ---------------------------------------------------------------------------
    async def _maybe_judge(self, job_id: str, job: _Job, number: int) -> None:
        pending = job.rounds.get(number)
        if pending is None or pending.closing is None or pending.judged or \
                not self._owns(job_id, job, number):
            return  # judged, or another replica's round (or not ours yet): keep its CLOSING
        closing = [r for r in pending.held if r.topic == topics.ROUNDS]
        judged = _Pending(pending.updates, pending.invalid, pending.closing,
                          [r for r in pending.held if r.topic != topics.ROUNDS])
        job.rounds[number] = judged
        try:
            await super()._maybe_judge(job_id, job, number)
        finally:  # judged or not (or failed), its CLOSING stays held until the round is done
            if number not in job.rounds:
                job.rounds[number] = _Pending(closing=pending.closing, held=closing,
                                              judged=True)
            else:
                judged.held.extend(closing)


__all__ = ["ReplicatedByzantine"]
