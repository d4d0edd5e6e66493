"""Which partition a key lands on, and which partitions a consumer-group member owns.

Both buses place a keyed record with :func:`partition_for` — Kafka's default partitioner
(murmur2 of the key, as the Java client and aiokafka compute it) — so a stage that splits
a topic's work by partition (the aggregator replicas: each folds the clients whose keys
fall in the partitions it owns) computes the same placement as the producer did, in both
deployments. Members of a group are given partitions range by range
(:func:`range_assignment`, Kafka's ``RangeAssignor``): topics with the same partition
count are co-partitioned, so one member owns partition ``p`` of every topic it reads (an
update and its verdict share a key, hence an index, hence an owner).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (``org.apache.kafka.common.utils.Utils.murmur2``), unsigned."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length % 4
    tail = length - rest
    if rest >= 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a record keyed ``key`` on a topic of ``partitions`` partitions
    (Kafka's default partitioner: ``murmur2(key) & 0x7fffffff % partitions``)."""
    if partitions < 1:
        raise ValueError("a topic has at least one partition")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def kafka_partitioner(key: bytes | None, all_partitions: Sequence[int],
                      available: Sequence[int]) -> int:
    """:func:`partition_for` as aiokafka's producer calls a partitioner (a record without
    a key goes to the first partition: the pipeline keys every record)."""
    if key is None:
        return all_partitions[0]
    return all_partitions[partition_for(key, len(all_partitions))]


def range_assignment(members: int, partitions: int) -> list[range]:
    """Kafka's ``RangeAssignor`` for one topic: member ``i`` (in member order) gets a
    contiguous range, the first ``partitions % members`` one partition more."""
    if members < 1:
        return []
    base, extra = divmod(partitions, members)
    out, start = [], 0
    for i in range(members):
        count = base + (1 if i < extra else 0)
        out.append(range(start, start + count))
        start += count
    return out


def owned_indices(assignment: Iterable[tuple[str, int]], topics: Sequence[str]
                  ) -> tuple[frozenset[int], bool]:
    """The partition indices a member owns in *every* one of ``topics``, and whether its
    assignment is co-partitioned (the same indices in each topic)."""
    per_topic = {t: frozenset(p for tt, p in assignment if tt == t) for t in topics}
    if not per_topic:
        return frozenset(), True
    common = frozenset.intersection(*per_topic.values())
    return common, all(v == common for v in per_topic.values())
