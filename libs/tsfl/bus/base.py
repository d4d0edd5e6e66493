"""The bus interface both deployments implement.

Delivery is at-least-once: a consumer group resumes from its last committed
offset, so anything read but not committed is delivered again. Consumers commit
only after the effect of a record is persisted, and handle records idempotently
by key.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from tsfl.errors import ErrorKind, TsflError

#: a record's value: bytes, or a bytearray reassembled from chunks
Payload = bytes | bytearray


class BusError(TsflError, RuntimeError):
    """Misuse of the bus (unknown topic, closed bus, ...)."""

    kind = ErrorKind.INTERNAL


class BusUnavailable(BusError):
    """The broker could not be reached (down, restarting, partitioned): a transient
    failure, so the call may be retried later (a record published twice is harmless:
    delivery is at-least-once and every consumer is idempotent by key)."""

    kind = ErrorKind.UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: Payload  # bytearray: reassembled from chunks (no extra copy)
    headers: tuple[tuple[str, bytes], ...] = field(default=())


def position_of(record: Record) -> Record:
    """The record without its value and headers: what a stage keeps of a record it has
    processed but not yet settled (a round's thousand 4 MB updates must not stay in
    memory until the round closes just to be committed)."""
    return Record(record.topic, record.partition, record.offset, None, b"")


def latest_per_partition(records: Iterable[Record]) -> dict[tuple[str, int], Record]:
    latest: dict[tuple[str, int], Record] = {}
    for record in records:
        tp = (record.topic, record.partition)
        if tp not in latest or record.offset > latest[tp].offset:
            latest[tp] = record
    return latest


class Consumer(ABC):
    """A member of a consumer group reading some topics."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def getone(self, timeout: float | None = None) -> Record | None:
        """The next record, or ``None`` once ``timeout`` seconds pass without one."""

    @abstractmethod
    async def commit(self, record: Record) -> None:
        """Mark ``record`` (and everything before it in its partition) as done."""

    def assignment(self) -> frozenset[tuple[str, int]]:
        """The (topic, partition) pairs this member owns now (empty before it joined or
        while its group rebalances). After a rebalance a member reads each of its
        partitions again from the committed offset."""
        return frozenset()

    def partition_count(self, topic: str) -> int | None:
        """How many partitions ``topic`` has, when known."""
        return None

    async def commit_all(self, records: Iterable[Record]) -> None:
        """Mark many records done: the last of each partition, in as few calls as the bus
        allows (a round's worth of held records costs one broker round trip, not one
        each)."""
        for record in latest_per_partition(records).values():
            await self.commit(record)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def __aiter__(self) -> AsyncIterator[Record]:
        while True:
            record = await self.getone()
            if record is not None:
                yield record


class Bus(ABC):
    """Topic-based publish/subscribe with keyed partitions and consumer groups."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def create_topics(self, topics: dict[str, int], timeout_s: float = 30.0
                            ) -> list[str]:
        """Create the missing topics (name -> partitions); existing ones are left as they
        are. Returns the names created."""

    @abstractmethod
    async def publish(self, topic: str, value: Payload, key: bytes | None = None,
                      headers: Sequence[tuple[str, bytes]] = ()) -> None:
        """Append a record; returns once the bus has accepted it."""

    async def publish_nowait(self, topic: str, value: Payload, key: bytes | None = None,
                             headers: Sequence[tuple[str, bytes]] = ()) -> asyncio.Future[None]:
        """Hand a record to the bus and return a future that resolves once it is
        accepted, so a stage can keep working while its output is in flight."""
        await self.publish(topic, value, key, headers)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    @abstractmethod
    def consumer(self, topics: Sequence[str], group_id: str) -> Consumer:
        """A new (not yet started) member of ``group_id`` reading ``topics``."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
