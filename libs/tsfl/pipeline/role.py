"""The lifecycle every pipeline role shares: one consumer, one loop, clean stop."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence

from tsfl.bus.base import Bus, Consumer, Record
from tsfl.storage.store import Store


class BusRole(ABC):
    """Consumes ``topics`` as member of ``group_id`` and hands each record to :meth:`handle`.

    ``handle`` commits what it has made durable. A record that makes it raise is logged
    and committed (skipped), so one bad message never stops the role.
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
        self._inflight: collections.deque[tuple[Record, asyncio.Future[None]]] = (
            collections.deque())
        self._committer: asyncio.Task[None] | None = None
        self._inflight_changed = asyncio.Event()

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._consumer

    async def start(self) -> None:
        self._consumer = self.bus.consumer(self.topics, self.group_id)
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name=f"tsfl-{self.name}")

    async def stop(self) -> None:
        if self._inflight and self._committer:  # let what is in flight land and commit
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), 10)
        if self._committer:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer:
            await self._consumer.stop()
            self._consumer = None

    async def _run(self) -> None:
        consumer = self.consumer
        while True:
            record = await consumer.getone()
            if record is None:
                continue
            try:
                await self.handle(record)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("%s failed on %s@%d:%d; skipping it", self.name,
                                   record.topic, record.partition, record.offset)
                await consumer.commit(record)

    async def commit_when_published(self, record: Record, published: asyncio.Future[None]
                                    ) -> None:
        """Commit ``record`` once the output it produced is accepted by the bus.

        The stage goes on to the next record meanwhile (its outputs are batched by the
        producer); commits keep the consumption order, and stop at the first failed
        publish, so after a restart that record and everything after it are read again.
        """
        if not self._inflight and published.done() and published.exception() is None:
            await self.consumer.commit(record)
            return
        self._inflight.append((record, published))
        self._inflight_changed.set()
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_in_order(),
                                                  name=f"tsfl-{self.name}-commits")

    async def _commit_in_order(self) -> None:
        while True:
            while not self._inflight:
                self._inflight_changed.clear()
                await self._inflight_changed.wait()
            record, published = self._inflight[0]
            try:
                await published
            except Exception:
                self.log.exception("%s: publishing the output of %s@%d:%d failed; not "
                                   "committing from there on", self.name, record.topic,
                                   record.partition, record.offset)
                return
            self._inflight.popleft()
            await self.consumer.commit(record)

    async def _drained(self) -> None:
        while self._inflight:
            await asyncio.sleep(0.01)

    @abstractmethod
    async def handle(self, record: Record) -> None:
        """Process one record; commit it once its effect is durable."""
