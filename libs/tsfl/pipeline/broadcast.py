"""A topic every replica of a stage reads whole: a consumer in a group of its own.

A stage that runs as N replicas of one consumer group splits its input topics; a control
topic every replica must see (``tsfl.rounds``: each aggregator replica needs the CLOSING
of every round) is read by each replica in a group of its own (``GROUP.REPLICA``). Records
are settled like a role's (:class:`~tsfl.bus.offsets.OffsetTracker`: a held record —
a CLOSING whose round is not done — keeps the commit position before it), and committed
by this reader's own consumer, after each record (every settle happens while one is
handled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from tsfl.bus.base import Bus, Consumer, Record
from tsfl.bus.offsets import OffsetTracker


async def start_both(group_start: Awaitable[None], reader: BroadcastReader,
                     group_stop: Callable[[], Awaitable[None]]) -> None:
    """Start a role's group consumer and its broadcast reader at once (each join of a
    group waits for the broker's rebalance delay: two in a row would double a replica's
    start); if either fails, stop the other and raise."""
    results = await asyncio.gather(group_start, reader.start(), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        if not isinstance(results[0], BaseException):
            await group_stop()
        if not isinstance(results[1], BaseException):
            await reader.stop(commit=False)
        raise errors[0]


class BroadcastReader:
    """Reads ``topic`` as the only member of ``group_id`` and hands records to ``handle``
    (which settles them, at once or later, through :meth:`settle`)."""

    def __init__(self, bus: Bus, topic: str, group_id: str,
                 handle: Callable[[Record], Awaitable[None]], log: logging.Logger):
        self.bus = bus
        self.topic = topic
        self.group_id = group_id
        self.handle = handle
        self.log = log
        self._consumer: Consumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._offsets = OffsetTracker()

    async def start(self) -> None:
        self._consumer = self.bus.consumer([self.topic], self.group_id)
        await self._consumer.start()
        self._offsets = OffsetTracker()
        self._task = asyncio.create_task(self._run(), name=f"tsfl-{self.group_id}")

    async def stop(self, *, commit: bool = True, timeout_s: float = 5.0) -> None:
        """Stop reading; commit what settled (unless the broker is known down)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            if commit:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._commit(everything=True), timeout_s)
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    def settle(self, *records: Record) -> None:
        """These records' effects are done (see :meth:`BusRole.settle`)."""
        for r in records:
            self._offsets.settle(r.topic, r.partition, r.offset)

    async def _commit(self, *, everything: bool = False) -> None:
        positions = self._offsets.take(everything=everything)
        if positions and self._consumer is not None:
            await self._consumer.commit_all(
                Record(topic, partition, position - 1, None, b"")
                for (topic, partition), position in positions.items())

    async def _handle(self, record: Record) -> None:
        """Hand ``record`` over until it is handled: a malformed record (ValueError,
        KeyError, TypeError) is skipped, any other failure (the store or the broker
        away) is retried — never settled unhandled, since a CLOSING skipped here would
        leave its round waiting for this replica forever (handlers are idempotent)."""
        retry_s = 0.1
        while True:
            try:
                await self.handle(record)
                return
            except asyncio.CancelledError:
                raise
            except (ValueError, KeyError, TypeError):
                self.log.exception("%s: malformed %s@%d:%d; skipping it", self.group_id,
                                   record.topic, record.partition, record.offset)
                self.settle(record)
                return
            except Exception as exc:
                self.log.warning("%s: handling %s@%d:%d failed (%s); retrying in %.1fs",
                                 self.group_id, record.topic, record.partition,
                                 record.offset, exc, retry_s)
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, 5.0)

    async def _run(self) -> None:
        assert self._consumer is not None
        retry_s = 0.1
        while True:
            try:
                record = await self._consumer.getone()
                if record is not None:
                    self._offsets.read(record.topic, record.partition, record.offset)
                    await self._handle(record)
                await self._commit()
                retry_s = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is unreachable: try again, later
                self.log.warning("%s: reading %s failed (%s); retrying", self.group_id,
                                 self.topic, exc)
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, 5.0)
