"""The lifecycle every pipeline role shares: one consumer, one loop, clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tsfl.bus.base import Bus, Consumer, Record
from tsfl.bus.log_throttle import Throttle
from tsfl.bus.offsets import OffsetTracker
from tsfl.storage.store import Store
from tsfl.telemetry import context_from_key, extract_trace_context, log_context

TRACER = trace.get_tracer("tsfl.pipeline")


class BusRole(ABC):
    """Consumes ``topics`` as member of ``group_id`` and hands each record to :meth:`handle`.

    ``handle`` :meth:`settle`\\ s each record once its effect is durable (at once, or later
    for records a stage holds, like a round's updates). Offsets are committed in the
    background, in one call for whatever settled meanwhile, and never past a record read
    and not yet settled (:class:`~tsfl.bus.offsets.OffsetTracker`), so a restart reads
    every held record again. A record that makes ``handle`` raise is logged and settled
    (skipped), so one bad message never stops the role; a consumer that fails (the broker
    is unreachable) is retried with back-off, and failed commits are logged at most once
    per ``WARN_EVERY_S`` with their count. While the broker is unreachable the role is
    detached from it (:meth:`detach`) and joins again after (:meth:`reconnect`).
    :meth:`stop` is bounded: ``drain_s`` for the outputs in flight and the final commit,
    then the bus's own stop timeout.
    """

    name: str = "role"
    #: at most one warning per kind of consumer/commit failure in this many seconds
    WARN_EVERY_S = 30.0
    #: the longest wait between two tries of a failing consumer
    MAX_RETRY_S = 5.0

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
        self._warnings = Throttle(self.WARN_EVERY_S)
        #: how long :meth:`stop` waits for outputs in flight (less while the broker is down)
        self.drain_s = 10.0

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._consumer

    def group_topics(self) -> tuple[str, ...]:
        """The topics read as a member of ``group_id``: all of :attr:`topics`, unless the
        role reads some apart (the aggregator replicas each read ``tsfl.rounds`` whole)."""
        return self.topics

    async def start(self) -> None:
        self._consumer = self.bus.consumer(self.group_topics(), self.group_id)
        await self._consumer.start()
        self._offsets = OffsetTracker()
        self._committer = asyncio.create_task(self._commit_loop(),
                                              name=f"tsfl-{self.name}-commits")
        self._task = asyncio.create_task(self._run(), name=f"tsfl-{self.name}")

    async def stop(self) -> None:
        await self._cancel_loop()
        if self._publishing:  # let what is in flight land, and commit it
            await asyncio.wait(list(self._publishing), timeout=self.drain_s)
        if self._committer:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None
            with contextlib.suppress(TimeoutError):  # a broker that is down takes none
                await asyncio.wait_for(self._commit_now(everything=True), self.drain_s)
        if self._consumer:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def detach(self) -> None:
        """Stop consuming without a final commit (the broker is unreachable: it could not
        take one) and leave the group; :meth:`reconnect` joins again. Records read and
        not settled are read again then."""
        await self._cancel_loop()
        if self._committer:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None
        if self._consumer:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def reconnect(self) -> None:
        """Consume again as a fresh member of the group (after a broker outage: the old
        member's session, and on a broker that lost its data its topics and committed
        offsets, are gone). Reading resumes at the committed offsets (at the topics'
        start when none survived); records read and not settled before are read again:
        handlers are idempotent by key. Raises :class:`~tsfl.bus.base.BusUnavailable`
        when the new member cannot join; the role consumes nothing until a later call
        succeeds."""
        await self.detach()
        await self.start()
        self.log.info("%s: consuming again", self.name)

    async def _cancel_loop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _warn(self, kind: str, message: str, *args: object,
              level: int = logging.WARNING) -> None:
        """A line of a repeating kind: one per ``WARN_EVERY_S``, with the count held."""
        held = self._warnings.admit(kind)
        if held is not None:
            self.log.log(level, message + (f" [{held} more in the last "
                                           f"{self.WARN_EVERY_S:.0f} s]" if held else ""),
                         *args)

    async def _run(self) -> None:
        consumer = self.consumer
        retry_s = 0.1
        while True:
            try:
                record = await consumer.getone()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is unreachable: try again, later
                self._warn("consume", "%s: reading failed (%s); retrying", self.name, exc)
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, self.MAX_RETRY_S)
                continue
            retry_s = 0.1
            if record is None:
                continue
            self._offsets.read(record.topic, record.partition, record.offset)
            fields = context_from_key(record.key)
            # the record's producer traced its publish: this handling continues that trace
            # (W3C context in the headers), and its log lines name the job and round
            with log_context(**fields), TRACER.start_as_current_span(
                    f"{self.name} {record.topic}", kind=SpanKind.CONSUMER,
                    context=extract_trace_context(record.headers),
                    attributes={"messaging.system": "kafka",
                                "messaging.destination.name": record.topic,
                                "tsfl.stage": self.name,
                                **{f"tsfl.{k}": v for k, v in fields.items()
                                   if k != "client"}}) as span:
                try:
                    await self.handle(record)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
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
                self._warn("publish", "%s: publishing the output of %s@%d:%d failed (%s); "
                           "not committing from there on", self.name, record.topic,
                           record.partition, record.offset,
                           "cancelled" if fut.cancelled() else fut.exception(),
                           level=logging.ERROR)
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
            self._warn("commit", "%s: committing offsets failed: %s", self.name, exc)

    @abstractmethod
    async def handle(self, record: Record) -> None:
        """Process one record; settle it once its effect is durable."""
