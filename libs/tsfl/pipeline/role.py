"""The lifecycle every pipeline role shares: one consumer, one loop, clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence

from tsfl.bus.base import Bus, Consumer, Record
from tsfl.bus.offsets import OffsetTracker
from tsfl.storage.store import Store


class BusRole(ABC):
    """Consumes ``topics`` as member of ``group_id`` and hands each record to :meth:`handle`.

    ``handle`` :meth:`settle`\\ s each record once its effect is durable (at once, or later
    for records a stage holds, like a round's updates). Offsets are committed in the
    background, in one call for whatever settled meanwhile, and never past a record read
    and not yet settled (:class:`~tsfl.bus.offsets.OffsetTracker`), so a restart reads
    every held record again. A record that makes ``handle`` raise is logged and settled
    (skipped), so one bad message never stops the role.
    """

    name: str = "role"

    def __init__(self, bus: Bus, store: Store, topics: Sequence[str], group_id: str):
        self.bus = bus
        self.store = store
        self.topics = tuple(topics)
        self.group_id = group_id
        self.log = logging.getLogger(f"tsfl.{self.name}")
        self._consumer: Consumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._offsets = OffsetTracker()
        self._publishing: set[asyncio.Future[None]] = set()
        self._to_commit = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._consumer

    async def start(self) -> None:
        self._consumer = self.bus.consumer(self.topics, self.group_id)
        await self._consumer.start()
        self._offsets = OffsetTracker()
        self._committer = asyncio.create_task(self._commit_loop(),
                                              name=f"tsfl-{self.name}-commits")
        self._task = asyncio.create_task(self._run(), name=f"tsfl-{self.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._publishing:  # let what is in flight land, and commit it
            await asyncio.wait(list(self._publishing), timeout=10)
        if self._committer:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None
            await self._commit_now(everything=True)
        if self._consumer:
            await self._consumer.stop()
            self._consumer = None

    async def _run(self) -> None:
        consumer = self.consumer
        while True:
            record = await consumer.getone()
            if record is None:
                continue
            self._offsets.read(record.topic, record.partition, record.offset)
            try:
                await self.handle(record)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("%s failed on %s@%d:%d; skipping it", self.name,
                                   record.topic, record.partition, record.offset)
                self.settle(record)

    # -- offsets ---------------------------------------------------------------------------
    def settle(self, *records: Record) -> None:
        """These records' effects are durable: their offsets may be committed once every
        record read before them in their partition is settled too."""
        moved = False
        for r in records:
            moved |= self._offsets.settle(r.topic, r.partition, r.offset)
        if moved:
            self._to_commit.set()

    def settle_when_published(self, record: Record, published: asyncio.Future[None]) -> None:
        """Settle ``record`` once the output it produced is accepted by the bus; the
        stage goes on to the next record meanwhile (its outputs are batched by the
        producer). A failed publish leaves the record unsettled, so commits stop before
        it and a restart reads it (and everything after it) again."""
        if published.done() and not published.cancelled() and published.exception() is None:
            self.settle(record)
            return
        self._publishing.add(published)

        def landed(fut: asyncio.Future[None]) -> None:
            self._publishing.discard(fut)
            if fut.cancelled() or fut.exception() is not None:
                self.log.error("%s: publishing the output of %s@%d:%d failed (%s); not "
                               "committing from there on", self.name, record.topic,
                               record.partition, record.offset,
                               "cancelled" if fut.cancelled() else fut.exception())
            else:
                self.settle(record)

        published.add_done_callback(landed)

    async def _commit_loop(self) -> None:
        while True:
            await self._to_commit.wait()
            self._to_commit.clear()
            await self._commit_now()

    async def _commit_now(self, *, everything: bool = False) -> None:
        positions = self._offsets.take(everything=everything)
        if not positions or self._consumer is None:
            return
        try:
            await self._consumer.commit_all(
                Record(topic, partition, position - 1, None, b"")
                for (topic, partition), position in positions.items())
        except Exception as exc:  # a rebalance: the records are read again elsewhere
            self.log.warning("%s: committing offsets failed: %s", self.name, exc)

    @abstractmethod
    async def handle(self, record: Record) -> None:
        """Process one record; settle it once its effect is durable."""
