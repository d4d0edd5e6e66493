"""The release stage's side of hierarchical aggregation: partial aggregates in, one
release out.

Mixed into the privacy role (:class:`tsfl.pipeline.privacy.Privacy`): a partial (see
:mod:`tsfl.pipeline.partials`) is held — unsettled, so uncommitted — until the round's
partials cover every partition exactly once; the merged aggregate is then released exactly
as a single aggregator's would be (budget, noise, server optimizer, checkpoint, model),
and the partials are settled. A partial of a round already released is settled at once
(the first after a restart publishes the stored model again, as a redelivered aggregate
does); a round whose merged partials accepted nobody, or whose complete set of partials
does not account for every uploaded client, is reported on ``tsfl.failures`` (never
released without a client, never left waiting), and a partial of a failed round is
settled at once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record
from tsfl.pipeline import events
from tsfl.pipeline.partials import MergeError, PartialError, PartialMerge
from tsfl.pipeline.routing import client_partition
from tsfl.wire.codecs import encode_f32


class PartialRelease:
    """Partial aggregates for a :class:`~tsfl.pipeline.role.BusRole` that releases
    aggregates (it provides ``_job``, ``_on_aggregate``, ``_publish``)."""

    bus: Bus
    log: logging.Logger
    _partials: PartialMerge | None = None
    _republished: set[tuple[str, int]] | None = None
    _failed: dict[str, int] | None = None  # per job, the highest failed round

    @property
    def partials(self) -> PartialMerge:
        if self._partials is None:
            self._partials = PartialMerge()
        return self._partials

    if TYPE_CHECKING:  # provided by the role
        def settle(self, *records: Record) -> None: ...
        async def _job(self, job_id: str) -> Any: ...
        async def _on_aggregate(self, head: dict[str, Any], payload: memoryview) -> None: ...
        async def _publish(self, state: Any, head: dict[str, Any], number: int,
                           epsilon: float | None) -> None: ...

    async def _on_partial(self, record: Record, head: dict[str, Any],
                          payload: memoryview) -> None:
        state = await self._job(head["job"])
        number = head["round"]
        if state is None:
            self.settle(record)
            return
        failed = (self._failed or {}).get(state.job_id, 0)
        if number <= failed and number > state.released:
            self.settle(record)  # a failed round's partial, re-published: nothing to do
            return
        if number <= state.released or head["version"] != state.version:
            if number == state.released:
                done = self._republished = self._republished or set()
                if (state.job_id, number) not in done:  # the release may not be out
                    done.add((state.job_id, number))
                    await self._publish(state, head, number,
                                        state.epsilon if state.plan is not None else None)
            self.settle(record, *self.partials.drop(state.job_id, state.released))
            return
        spec, job_id = state.spec, state.job_id

        def placement(client: str, of: int) -> int:
            return client_partition(spec, job_id, number, client, of)

        try:
            merged = self.partials.offer(record, head, payload, state.layout.total_size,
                                         placement)
        except MergeError as exc:
            held = self.partials.drop(job_id, only=number)
            self.log.error("round %d of %s: its partial aggregates cannot be merged (%s); "
                           "failing the round", number, job_id, exc)
            await self._fail(state, number, {}, f"partial aggregates: {exc}")
            self.settle(record, *held)
            return
        except PartialError as exc:  # this partial alone is wrong: the others may complete
            self.log.warning("partial aggregate of round %d of %s refused: %s", number,
                             job_id, exc)
            self.settle(record)
            return
        if merged is None:
            return  # held until the round's other partials are here
        try:
            if merged.mean is None:
                await self._fail(state, number, merged.head["rejected"],
                                 merged.reason or "no valid update to aggregate")
            else:
                await self._on_aggregate(merged.head, memoryview(encode_f32(merged.mean)))
        finally:
            self.settle(*merged.held)

    async def _fail(self, state: Any, number: int, rejected: dict[str, str],
                    reason: str) -> None:
        msg = events.aggregate_message(
            state.job_id, number, state.version, layout=state.layout.digest, ok=False,
            accepted=[], rejected=rejected, num_examples=0, train_loss=None, reason=reason)
        await self.bus.publish(topics.FAILURES, msg, key=topics.round_key(state.job_id, number))
        failed = self._failed = self._failed or {}
        failed[state.job_id] = max(failed.get(state.job_id, 0), number)

    def _drop_partials(self, job_id: str, up_to: int | None = None) -> None:
        """A failed round (or, with None, a finished job): forget its partials."""
        self.settle(*self.partials.drop(job_id, up_to))
        failed = self._failed = self._failed or {}
        if up_to is None:
            failed.pop(job_id, None)
        else:
            failed[job_id] = max(failed.get(job_id, 0), up_to)
