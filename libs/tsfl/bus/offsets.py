"""Commit positions that never pass a record still being worked on.

A stage holds some records for a while (an update waits for its round to close, a
CLOSING waits for the round's last update) and settles others at once; several jobs share
each partition. Committing a settled record's offset would also commit every held record
before it in the partition, and a restart would then skip them. The tracker keeps, per
topic-partition, the offsets read and not yet settled, in reading order; the commit
position is one past the longest settled prefix (Kafka's "committed offset" = the next
record to read).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


@dataclass
class _Partition:
    open: deque[int] = field(default_factory=deque)  # read, in order
    settled: set[int] = field(default_factory=set)  # settled, not yet at the head
    last_read: int = -1
    position: int | None = None  # next offset to commit (None: nothing settled yet)
    committed: int | None = None  # the last position handed out by take()


class OffsetTracker:
    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _Partition] = {}

    def read(self, topic: str, partition: int, offset: int) -> None:
        """A record handed to the stage (records of a partition arrive in offset order;
        an offset at or below the last one read means a re-delivery after a rebalance or
        a restart: the partition's bookkeeping starts over from there)."""
        tp = (topic, partition)
        part = self._parts.get(tp)
        if part is None or offset <= part.last_read:
            part = self._parts[tp] = _Partition()
        part.open.append(offset)
        part.last_read = offset

    def settle(self, topic: str, partition: int, offset: int) -> bool:
        """The record's effect is durable; True when the partition's position moved."""
        part = self._parts.get((topic, partition))
        if part is None or not part.open or offset < part.open[0] or offset > part.last_read:
            return False  # not read since the last start-over: nothing to do
        part.settled.add(offset)
        moved = False
        while part.open and part.open[0] in part.settled:
            done = part.open.popleft()
            part.settled.discard(done)
            part.position = done + 1
            moved = True
        return moved

    def take(self, *, everything: bool = False) -> dict[TopicPartition, int]:
        """Positions that moved since the last call (to commit); ``everything``: all
        known positions (a final commit, whatever an interrupted one left)."""
        out = {}
        for tp, part in self._parts.items():
            if part.position is not None and (everything or part.position != part.committed):
                out[tp] = part.committed = part.position
        return out

    def forget(self, topic: str, partition: int) -> None:
        """The partition left this member (a rebalance): drop its bookkeeping, so what was
        read and never settled here neither freezes its commits nor rewinds them if the
        partition comes back (its reading then starts from the group's committed offset)."""
        self._parts.pop((topic, partition), None)

    def retain(self, assigned: set[TopicPartition] | frozenset[TopicPartition]) -> None:
        """Forget every partition not in ``assigned`` (this member's assignment now)."""
        for tp in [tp for tp in self._parts if tp not in assigned]:
            del self._parts[tp]

    def held(self, topic: str, partition: int) -> int:
        """How many records of the partition are read and not settled."""
        part = self._parts.get((topic, partition))
        return len(part.open) if part else 0
