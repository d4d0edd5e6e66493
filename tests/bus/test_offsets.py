"""Commit positions never pass a record read and not yet settled."""

import random

from hypothesis import given
from hypothesis import strategies as st

from tsfl.bus.offsets import OffsetTracker


def test_position_stops_at_the_first_held_record():
    t = OffsetTracker()
    for o in range(5):
        t.read("a", 0, o)
    assert t.settle("a", 0, 0)
    assert not t.settle("a", 0, 2)  # 1 is still held
    assert t.take() == {("a", 0): 1}
    assert t.take() == {}  # nothing moved since
    assert t.settle("a", 0, 1)  # 1 and 2 are done now
    assert t.take() == {("a", 0): 3}
    assert t.held("a", 0) == 2
    assert t.take(everything=True) == {("a", 0): 3}


def test_partitions_are_independent_and_redelivery_starts_over():
    t = OffsetTracker()
    t.read("a", 0, 10)
    t.read("a", 1, 7)
    t.settle("a", 1, 7)
    assert t.take() == {("a", 1): 8}
    t.read("a", 0, 11)
    t.read("a", 0, 10)  # re-delivered after a rebalance: start over from 10
    assert t.held("a", 0) == 1
    assert not t.settle("a", 0, 11)  # not read since the start-over
    t.settle("a", 0, 10)
    assert t.take() == {("a", 0): 11}
    assert not t.settle("b", 0, 3)  # never read


@given(st.integers(1, 60), st.randoms(use_true_random=False))
def test_committed_position_is_the_longest_settled_prefix(n, rnd: random.Random):
    t = OffsetTracker()
    for o in range(n):
        t.read("t", 0, 100 + o)
    order = list(range(n))
    rnd.shuffle(order)
    settled: set[int] = set()
    for o in order:
        t.settle("t", 0, 100 + o)
        settled.add(o)
        prefix = 0
        while prefix in settled:
            prefix += 1
        moved = t.take()
        if prefix:
            assert t.take(everything=True) == {("t", 0): 100 + prefix}
        if moved:
            assert moved == {("t", 0): 100 + prefix}


def test_a_partition_that_left_is_forgotten_so_its_return_neither_freezes_nor_rewinds():
    """A member read records 0-5 of a partition and held them; a rebalance gave the
    partition to another member, which finished them and committed 10; when it comes back
    here, reading resumes at 10: the stale open offsets must not hold the position back
    (a frozen commit) or be committed at a stop (a rewind to 2)."""
    t, topic = OffsetTracker(), "tsfl.updates.direct"
    for offset in range(6):
        t.read(topic, 2, offset)
    t.settle(topic, 2, 0)
    t.settle(topic, 2, 1)
    assert t.take() == {(topic, 2): 2}
    t.retain({(topic, 0), (topic, 1)})  # partition 2 left this member
    for offset in (10, 11, 12):  # it came back, at the other member's committed offset
        t.read(topic, 2, offset)
        t.settle(topic, 2, offset)
    assert t.take() == {(topic, 2): 13} and t.held(topic, 2) == 0
    t.forget(topic, 2)
    assert t.take(everything=True) == {}
