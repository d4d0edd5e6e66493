"""In-memory bus for the embedded deployment, with Kafka's delivery semantics.

Topics have partitions chosen by key hash (Kafka's partitioner,
:func:`~tsfl.bus.partitioning.partition_for`); consumer groups share partitions among
their members range by range (Kafka's ``RangeAssignor``) and, after every rebalance,
resume from committed offsets (at-least-once). Records every
subscribed group has committed are dropped, so memory tracks what is in flight.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from tsfl.bus.base import Bus, BusError, Consumer, Payload, Record
from tsfl.bus.partitioning import partition_for, range_assignment


@dataclass
class _Partition:
    records: deque[Record] = field(default_factory=deque)
    base: int = 0  # offset of records[0]
    next_offset: int = 0


@dataclass
class _Group:
    topics: set[str] = field(default_factory=set)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    members: list[MemoryConsumer] = field(default_factory=list)


class MemoryBus(Bus):
    def __init__(self, default_partitions: int = 1):
        self._topics: dict[str, list[_Partition]] = {}
        self._groups: dict[str, _Group] = {}
        self._readers: dict[str, set[MemoryConsumer]] = {}  # per topic: wake only its readers
        self._default_partitions = default_partitions
        self._running = False

    async def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False
        for group in self._groups.values():
            for member in list(group.members):
                member._closed = True
        for topic in list(self._readers):
            self._wake(topic)

    async def create_topics(self, topics: dict[str, int], timeout_s: float = 30.0
                            ) -> list[str]:
        created = []
        for name, partitions in topics.items():
            if partitions < 1:
                raise BusError(f"topic {name!r} needs at least one partition")
            if name not in self._topics:
                self._topics[name] = [_Partition() for _ in range(partitions)]
                created.append(name)
        return created

    async def publish(self, topic: str, value: Payload, key: bytes | None = None,
                      headers: Sequence[tuple[str, bytes]] = ()) -> None:
        if not self._running:
            raise BusError("bus is not started")
        if not isinstance(value, bytes | bytearray | memoryview):
            raise BusError("record values must be bytes")
        parts = self._topics.get(topic)
        if parts is None:
            raise BusError(f"unknown topic {topic!r}; create it first")
        index = partition_for(key, len(parts)) if key is not None else 0
        part = parts[index]
        record = Record(topic, index, part.next_offset, key, bytes(value), tuple(headers))
        part.records.append(record)
        part.next_offset += 1
        self._wake(topic)

    def consumer(self, topics: Sequence[str], group_id: str) -> MemoryConsumer:
        for t in topics:
            if t not in self._topics:
                raise BusError(f"unknown topic {t!r}; create it first")
        return MemoryConsumer(self, tuple(topics), group_id)

    # -- internals -----------------------------------------------------------------------
    def _wake(self, topic: str) -> None:
        for reader in self._readers.get(topic, ()):
            reader._ready.set()

    def _join(self, member: MemoryConsumer) -> None:
        group = self._groups.setdefault(member.group_id, _Group())
        group.topics.update(member.topics)
        group.members.append(member)
        for t in member.topics:
            self._readers.setdefault(t, set()).add(member)
        self._rebalance(group)

    def _leave(self, member: MemoryConsumer) -> None:
        group = self._groups.get(member.group_id)
        for t in member.topics:
            self._readers.get(t, set()).discard(member)
        member._ready.set()
        if group and member in group.members:
            group.members.remove(member)
            self._rebalance(group)

    def _rebalance(self, group: _Group) -> None:
        """Range-assign each topic's partitions over the members reading it (in joining
        order, as Kafka's RangeAssignor); every member resumes at the committed offsets."""
        for m in group.members:
            m._positions.clear()
        for topic in sorted(group.topics):
            readers = [m for m in group.members if topic in m.topics]
            parts = self._topics[topic]
            for member, owned in zip(readers, range_assignment(len(readers), len(parts)),
                                     strict=True):
                for p in owned:
                    member._positions[(topic, p)] = group.committed.get((topic, p),
                                                                        parts[p].base)
        for topic in group.topics:
            self._wake(topic)

    def _commit(self, group_id: str, record: Record) -> None:
        group = self._groups[group_id]
        tp = (record.topic, record.partition)
        if record.offset + 1 > group.committed.get(tp, 0):
            group.committed[tp] = record.offset + 1
        self._trim(record.topic, record.partition)

    def _trim(self, topic: str, partition: int) -> None:
        readers = [g for g in self._groups.values() if topic in g.topics]
        if not readers:
            return
        low = min(g.committed.get((topic, partition), 0) for g in readers)
        part = self._topics[topic][partition]
        while part.records and part.base < low:
            part.records.popleft()
            part.base += 1

    def pending(self, topic: str) -> int:
        """Records still held for ``topic`` (for tests and monitoring)."""
        return sum(len(p.records) for p in self._topics.get(topic, []))


class MemoryConsumer(Consumer):
    def __init__(self, bus: MemoryBus, topics: tuple[str, ...], group_id: str):
        self._bus = bus
        self.topics = topics
        self.group_id = group_id
        self._positions: dict[tuple[str, int], int] = {}
        self._closed = False
        self._started = False
        self._rr = 0
        self._ready = asyncio.Event()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._bus._join(self)

    async def stop(self) -> None:
        if self._started and not self._closed:
            self._closed = True
            self._bus._leave(self)

    def _poll(self) -> Record | None:
        tps = list(self._positions)
        for i in range(len(tps)):
            tp = tps[(self._rr + i) % len(tps)]
            part = self._bus._topics[tp[0]][tp[1]]
            pos = max(self._positions[tp], part.base)
            if pos < part.next_offset:
                self._positions[tp] = pos + 1
                self._rr = (self._rr + i + 1) % len(tps)
                return part.records[pos - part.base]
        return None

    async def getone(self, timeout: float | None = None) -> Record | None:
        if not self._started:
            raise BusError("consumer is not started")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._closed:
            record = self._poll()
            if record is not None:
                return record
            self._ready.clear()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._ready.wait(), remaining)
            except TimeoutError:
                return None
        return None

    def assignment(self) -> frozenset[tuple[str, int]]:
        return frozenset(self._positions)

    def partition_count(self, topic: str) -> int | None:
        parts = self._bus._topics.get(topic)
        return len(parts) if parts is not None else None

    async def commit(self, record: Record) -> None:
        if (record.topic, record.partition) not in self._positions:
            return  # partition moved to another member: its commit is theirs to make
        self._bus._commit(self.group_id, record)
