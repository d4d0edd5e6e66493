"""tsfl.rounds as each replica reads it whole (pipeline/broadcast.py): a CLOSING is never
settled before its round is done — not when handling it fails for a while (the store or
the broker away), not when a restarted coordinator announces it again at a newer offset."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from tsfl.bus import MemoryBus, topics
from tsfl.bus.base import Record
from tsfl.pipeline import events
from tsfl.pipeline.aggregator import _JobState
from tsfl.pipeline.aggregator_replicas import PartitionedAggregator
from tsfl.pipeline.broadcast import BroadcastReader


def _event(offset: int, kind: str, number: int, **fields) -> Record:  # type: ignore[no-untyped-def]
    return Record(topics.ROUNDS, 0, offset, b"j", events.round_event(kind, "j", number,
                                                                     **fields))


class _Store:
    async def latest_checkpoint_meta(self, job_id: str) -> tuple[int, int]:
        return (0, 0)


async def test_a_reannounced_closing_is_held_in_place_of_the_first_and_let_go_when_done():
    replica = PartitionedAggregator(MemoryBus(), _Store(), replica="a")  # type: ignore[arg-type]
    state = _JobState("j", SimpleNamespace(robust=SimpleNamespace(aggregator="none")),
                      None, 0, 0)  # type: ignore[arg-type]

    async def job(_: str) -> _JobState:
        return state

    replica._job = job  # type: ignore[method-assign]
    replica._new_fold = lambda s: None  # type: ignore[assignment,method-assign,return-value]
    positions = []
    log = [_event(0, events.JOB_STARTED, 0), _event(1, events.CLOSING, 1, uploaded=["a"]),
           _event(2, events.CLOSING, 1, uploaded=["a"]),  # a restarted coordinator's
           _event(3, events.PUBLISHED, 1), _event(4, events.JOB_STARTED, 0)]
    for record in log:
        replica.rounds._offsets.read(record.topic, record.partition, record.offset)
        await replica._on_broadcast(record)
        positions.append(replica.rounds._offsets.take().get((topics.ROUNDS, 0)))
    # held at the CLOSING (1, then the newer 2) until the round is published, then past
    assert positions == [1, None, 2, 4, 5]


async def test_a_failing_handler_is_retried_not_skipped_and_a_malformed_record_is():
    bus = MemoryBus()
    await bus.start()
    await bus.create_topics({topics.ROUNDS: 1})
    seen: list[int] = []
    failures = iter([RuntimeError("the store is away"), RuntimeError("still away")])

    async def handle(record: Record) -> None:
        seen.append(record.offset)
        if record.offset == 0:
            error = next(failures, None)
            if error is not None:
                raise error
        if record.offset == 1:
            raise ValueError("malformed")
        reader.settle(record)

    reader = BroadcastReader(bus, topics.ROUNDS, "g.a", handle, logging.getLogger("test"))
    await reader.start()
    for n in range(3):
        await bus.publish(topics.ROUNDS, events.round_event(events.CLOSING, "j", n), key=b"j")
    for _ in range(100):
        if seen.count(2):
            break
        await asyncio.sleep(0.05)
    await reader.stop()
    await bus.stop()
    assert seen == [0, 0, 0, 1, 2]  # offset 0 three times (two failures), 1 skipped once
