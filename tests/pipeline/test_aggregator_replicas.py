"""Aggregator replicas and hierarchical aggregation (embedded: MemoryBus, one process).

Two aggregator replicas in one consumer group split the update topics' partitions, each
publishes a partial aggregate of its partitions, and the release stage merges them: the
released models equal the single-aggregator run's (up to float summation order).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner

from tsfl.bus import TOPICS, MemoryBus, topics
from tsfl.bus.base import Record
from tsfl.bus.partitioning import owned_indices, partition_for, range_assignment
from tsfl.config import parse_job
from tsfl.pipeline import events
from tsfl.pipeline import roles as roles_module
from tsfl.pipeline.aggregator_replicas import PartitionedAggregator
from tsfl.pipeline.byzantine_replicas import ReplicatedByzantine
from tsfl.pipeline.partials import (
    MergeError,
    PartialError,
    PartialFold,
    PartialMerge,
    exact_cover,
    partial_message,
)
from tsfl.runtime.embedded import run_embedded

BASE = {"seed": 3, "rounds": 3, "clients": {"count": 12, "per_round": 8},
        "model": {"kind": "logreg"}, "training": {"lr": 0.1, "epochs": 1, "batch_size": 8}}
MODES: dict[str, dict[str, Any]] = {
    "fedavg": {},
    # a robust rule judges the whole round: keyed by round, one byzantine replica judges
    # it and one aggregator replica folds it (an update folds once its verdict is here)
    "krum": {"robust": {"aggregator": "multikrum", "num_malicious": 1}},
    "median": {"robust": {"aggregator": "median", "num_malicious": 1}},
    "wfagg": {"robust": {"aggregator": "wfagg", "num_malicious": 1}},
    "central-dp": {"privacy": {"mode": "central", "noise_multiplier": 0.5, "clip_norm": 1.0,
                               "noise": "seeded"}},
}


# -- partitioning ----------------------------------------------------------------------------
def test_partitioner_is_kafkas():
    kafka = DefaultPartitioner()
    for n in range(200):
        key = os.urandom(n % 64)
        for parts in (1, 3, 4, 7):
            assert partition_for(key, parts) == kafka(key, list(range(parts)),
                                                      list(range(parts)))


def test_range_assignment_co_partitions():
    assert [list(r) for r in range_assignment(3, 4)] == [[0, 1], [2], [3]]
    assert [list(r) for r in range_assignment(5, 4)][4] == []
    parts, aligned = owned_indices({("a", 0), ("a", 1), ("b", 0), ("b", 1)}, ["a", "b"])
    assert parts == {0, 1} and aligned
    parts, aligned = owned_indices({("a", 0), ("b", 1)}, ["a", "b"])
    assert parts == frozenset() and not aligned


async def test_memory_bus_gives_members_the_same_indices_of_each_topic():
    bus = MemoryBus()
    await bus.start()
    await bus.create_topics({"a": 4, "b": 4, "c": 4})
    members = [bus.consumer(["a", "b", "c"], "g") for _ in range(3)]
    for m in members:
        await m.start()
    owned = [owned_indices(m.assignment(), ["a", "b", "c"]) for m in members]
    assert all(aligned for _, aligned in owned)
    assert sorted(p for parts, _ in owned for p in parts) == [0, 1, 2, 3]
    await members[0].stop()  # the others take its partitions over
    owned = [owned_indices(m.assignment(), ["a", "b", "c"])[0] for m in members[1:]]
    assert sorted(p for parts in owned for p in parts) == [0, 1, 2, 3]
    await bus.stop()


# -- the merge -------------------------------------------------------------------------------
def test_exact_cover():
    s = frozenset
    assert exact_cover([s({0, 1}), s({2, 3})], 4) == [s({0, 1}), s({2, 3})]
    assert exact_cover([s({0, 1}), s({1, 2, 3})], 4) is None
    assert exact_cover([s({2, 3}), s({0, 1, 2, 3}), s({0})], 4) == [s({0, 1, 2, 3})]


def _partial(parts: set[int], covers: list[str], mean: np.ndarray | None, weight: float,
             uploaded: set[str], *, accepted: list[str] | None = None
             ) -> tuple[Record, Any]:
    p = PartialFold("j", 1, 0, "L", frozenset(parts), 4, uploaded, covers, "r",
                    covers if accepted is None else accepted, {}, 10 * len(covers), 1.0,
                    10 * len(covers), mean, weight, "examples", 0)
    data = partial_message(p)
    head, payload = events.parse_aggregate(data)
    return Record(topics.AGGREGATES, 0, sum(parts), None, data), (head, payload)


def test_partials_merge_to_the_weighted_mean_once_they_cover_every_partition():
    merge = PartialMerge()
    uploaded = {"a", "b", "c"}
    a = np.array([1.0, 2.0], np.float32)
    b = np.array([4.0, -2.0], np.float32)
    rec, (head, payload) = _partial({0, 1}, ["a", "b"], a, 2.0, uploaded)
    assert merge.offer(rec, head, payload, 2) is None
    assert merge.offer(rec, head, payload, 2) is None  # redelivered: counted once
    rec2, (head2, payload2) = _partial({2, 3}, ["c"], b, 1.0, uploaded)
    merged = merge.offer(rec2, head2, payload2, 2)
    assert merged is not None and merge.pending() == 0
    np.testing.assert_allclose(merged.mean, (2 * a + b) / 3, rtol=1e-7)
    assert merged.head["weight_total"] == 3.0
    assert sorted(merged.head["accepted"]) == ["a", "b", "c"]
    assert len(merged.held) == 3  # settled once released


def test_a_merge_that_misses_an_uploaded_client_is_refused():
    merge = PartialMerge()
    uploaded = {"a", "b", "c"}
    rec, (head, payload) = _partial({0, 1}, ["a"], np.ones(2, np.float32), 1.0, uploaded)
    merge.offer(rec, head, payload, 2)
    rec2, (head2, payload2) = _partial({2, 3}, ["c"], np.ones(2, np.float32), 1.0, uploaded)
    with pytest.raises(PartialError):
        merge.offer(rec2, head2, payload2, 2)


def test_a_partial_that_disagrees_on_the_round_waits_apart_and_blocks_nobody():
    merge = PartialMerge()
    one = np.ones(2, np.float32)
    rec, (head, payload) = _partial({0, 1}, ["a", "b"], one, 2.0, {"a", "b", "x"})
    assert merge.offer(rec, head, payload, 2) is None  # another uploaded set: apart
    rec2, (head2, payload2) = _partial({0, 1, 2, 3}, ["a", "b", "c"], one, 3.0,
                                       {"a", "b", "c"})
    merged = merge.offer(rec2, head2, payload2, 2)
    assert merged is not None and sorted(merged.head["accepted"]) == ["a", "b", "c"]
    assert len(merged.held) == 2 and merge.pending() == 0  # both settled with the release


@pytest.mark.parametrize("lie", ["accepts-uncovered", "accepts-twice", "mean-without-accepted",
                                 "misplaced"])
def test_a_partial_that_counts_a_client_it_does_not_cover_is_refused_alone(lie):
    merge = PartialMerge()
    uploaded = {"a", "b", "c"}
    one = np.ones(2, np.float32)

    def placement(client: str, of: int) -> int:
        return {"a": 0, "b": 1, "c": 2}[client]

    honest = _partial({0, 1}, ["a", "b"], one, 2.0, uploaded)
    bad = {"accepts-uncovered": _partial({2, 3}, ["c"], one, 2.0, uploaded,
                                         accepted=["c", "a"]),
           "accepts-twice": _partial({2, 3}, ["c"], one, 2.0, uploaded, accepted=["c", "c"]),
           "mean-without-accepted": _partial({2, 3}, ["c"], None, 1.0, uploaded),
           "misplaced": _partial({2, 3}, ["c", "a"], one, 2.0, uploaded)}[lie]
    if lie == "mean-without-accepted":  # accepts c with no mean to fold
        bad[1][0]["accepted"] = ["c"]
    assert merge.offer(honest[0], *honest[1], 2, placement) is None
    with pytest.raises(PartialError) as refused:
        merge.offer(bad[0], *bad[1], 2, placement)
    assert not isinstance(refused.value, MergeError)
    good = _partial({2, 3}, ["c"], np.full(2, 4.0, np.float32), 1.0, uploaded)
    merged = merge.offer(good[0], *good[1], 2, placement)  # the honest one still merges
    assert merged is not None and sorted(merged.head["accepted"]) == ["a", "b", "c"]
    assert merged.head["weight_total"] == 3.0
    np.testing.assert_allclose(merged.mean, (2 * one + np.full(2, 4.0)) / 3)


def test_a_round_whose_partials_accept_nobody_fails():
    merge = PartialMerge()
    rec, (head, payload) = _partial({0, 1, 2, 3}, ["a"], None, 0.0, {"a"}, accepted=[])
    merged = merge.offer(rec, head, payload, 2)
    assert merged is not None and merged.mean is None and merged.reason


# -- embedded runs ---------------------------------------------------------------------------
def _run(spec_extra: dict[str, Any], tmp_path, replicas: int,
         seen: list[dict[str, Any]]) -> np.ndarray:
    """The job embedded with ``replicas`` aggregator and ``replicas`` byzantine replicas;
    ``seen`` gets each partial aggregate's head and each replica's verdicts
    (``{"verdicts": replica, "round": n}``)."""
    original = roles_module.LocalPipeline.__init__

    def with_replicas(self, bus, store):  # type: ignore[no-untyped-def]
        original(self, bus, store)
        for i in range(replicas):
            name = "" if i == 0 else f"-{i + 1}"
            self.roles[f"aggregator{name}"] = PartitionedAggregator(
                _Spy(bus, seen, f"r{i}"), store, replica=f"r{i}")
            self.roles[f"byzantine{name}"] = ReplicatedByzantine(
                _Spy(bus, seen, f"b{i}"), store, replica=f"b{i}")

    mp = pytest.MonkeyPatch()
    mp.setattr(roles_module.LocalPipeline, "__init__", with_replicas)
    try:
        spec = parse_job({**BASE, "name": "replicas", **spec_extra})
        result = asyncio.run(run_embedded(spec, tmp_path))
    finally:
        mp.undo()
    assert result.status == "COMPLETED", result.reason
    return result.final_vector


class _Spy:
    """The bus as a replica sees it: its partial aggregates and verdicts are recorded."""

    def __init__(self, bus: MemoryBus, seen: list[dict[str, Any]], replica: str):
        self._bus, self._seen, self._replica = bus, seen, replica

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)

    async def publish(self, topic: str, value: bytes, *args: Any, **kw: Any) -> None:
        if topic == topics.AGGREGATES:
            self._seen.append(events.parse_aggregate(value)[0])
        elif topic == topics.VERDICTS:
            verdict = events.parse_verdict(value)
            self._seen.append({"verdicts": self._replica, "round": verdict["round"],
                               "client": verdict["client"], "weight": verdict["weight"]})
        await self._bus.publish(topic, value, *args, **kw)


@pytest.mark.parametrize("mode", list(MODES))
def test_two_replicas_of_each_stage_release_the_single_replica_model(mode, tmp_path):
    one: list[dict[str, Any]] = []
    two: list[dict[str, Any]] = []
    single = _run(MODES[mode], tmp_path / "one", 1, one)
    split = _run(MODES[mode], tmp_path / "two", 2, two)
    assert np.max(np.abs(single - split)) <= 1e-6
    partials_one = [h for h in one if "partial" in h]
    partials_two = [h for h in two if "partial" in h]
    assert all(h["partial"]["parts"] == [0, 1, 2, 3] for h in partials_one)
    rounds = BASE["rounds"]
    assert len(partials_one) == rounds
    # every round: one partial from each replica, covering half the partitions each
    assert sorted(tuple(h["partial"]["parts"]) for h in partials_two) == sorted(
        [(0, 1), (2, 3)] * rounds)
    assert {h["partial"]["replica"] for h in partials_two} == {"r0", "r1"}
    for number in range(1, rounds + 1):  # the two partials account for every upload once
        pair = [h["partial"] for h in partials_two if h["round"] == number]
        assert sum(len(p["covers"]) for p in pair) == pair[0]["uploaded"] > 0
    if "robust" not in MODES[mode]:
        assert all(len(h["partial"]["covers"]) < 8 for h in partials_two)
        assert not [h for h in two if "verdicts" in h]
        return
    # a robust round is whole at one replica of each stage: one partial covers it, the
    # other is empty; one byzantine replica judged it, with the single replica's verdicts
    assert sorted(len(h["partial"]["covers"]) for h in partials_two) == sorted(
        [0, 8] * rounds)
    verdicts_one = {(v["round"], v["client"]): v["weight"] for v in one if "verdicts" in v}
    verdicts_two = {(v["round"], v["client"]): v["weight"] for v in two if "verdicts" in v}
    assert verdicts_two == verdicts_one and len(verdicts_one) == 8 * rounds
    judges = {n: {v["verdicts"] for v in two if v.get("round") == n and "verdicts" in v}
              for n in range(1, rounds + 1)}
    assert all(len(j) == 1 for j in judges.values()), judges


def test_tsfl_rounds_is_read_whole_by_every_replica():
    roles = [PartitionedAggregator(MemoryBus(), None, replica=r) for r in ("a", "b")]  # type: ignore[arg-type]
    assert all(topics.ROUNDS not in r.group_topics() for r in roles)
    assert all(topics.ROUNDS in r.topics for r in roles)
    assert {r.rounds.group_id for r in roles} == {"aggregator.a", "aggregator.b"}
    assert TOPICS[topics.ROUNDS] == 1


JOB_ID = "fedbuff-1"


async def test_a_fedbuff_release_with_a_robust_rule_is_judged_whole_by_two_replicas(
        tmp_path, monkeypatch):
    """FedBuff's uploads are keyed as the sync path's: by release for a robust job, so the
    replica owning the release's partition sees all of it (keyed by client, the owner
    would wait for updates that went to the other replica, and the release would hang)."""
    from tsfl.core.layout import ParamLayout
    from tsfl.core.update import Update
    from tsfl.storage import Store
    from tsfl.wire import encode_update

    layout = ParamLayout([("w", (6,), "float32")])
    # keyed by client, this job's updates spread over partitions 0-2, its release's key
    # is on partition 0: the split the hang needs
    assert partition_for(f"{JOB_ID}:1".encode(), 4) == 0
    assert {partition_for(f"{JOB_ID}:1:c{i}".encode(), 4) for i in range(4)} == {0, 1, 2}
    spec = parse_job({"name": "fb", "rounds": 1, "clients": {"count": 4, "per_round": 4},
                      "strategy": {"name": "fedavg", "mode": "async", "fedbuff": {
                          "buffer": 4, "concurrency": 4, "max_staleness": 2}},
                      "robust": {"aggregator": "norm_bounding", "max_norm": 10.0},
                      "round": {"deadline_s": 30}})
    original = roles_module.LocalPipeline.__init__

    def with_replicas(self, bus, store):  # type: ignore[no-untyped-def]
        original(self, bus, store)
        self.roles["aggregator-2"] = PartitionedAggregator(bus, store, replica="r1")
        self.roles["byzantine-2"] = ReplicatedByzantine(bus, store, replica="b1")

    monkeypatch.setattr(roles_module.LocalPipeline, "__init__", with_replicas)
    store = await Store.open(f"sqlite:///{tmp_path / 'fb.db'}")
    pipe = await roles_module.LocalPipeline.in_memory(store)
    try:
        coord = pipe.coordinator
        await coord.submit_job(JOB_ID, spec, layout, np.zeros(6, np.float32))
        clients = ["c0", "c1", "c2", "c3"]
        for c in clients:
            await coord.register_device(JOB_ID, c, "token-" + c)
        await coord.open_round(JOB_ID)
        for c in clients:
            task = await coord.get_task(c, JOB_ID)
            frame = encode_update(Update(JOB_ID, task.round, c, task.model_version, 10,
                                         np.full(6, 0.1, np.float32), {"train_loss": 1.0}),
                                  layout)
            assert (await coord.upload(c, frame)).accepted
        released = await asyncio.wait_for(coord.wait_round(JOB_ID), 20)
        assert released.ok and sorted(released.accepted) == clients
        np.testing.assert_allclose(coord.model_vector(JOB_ID), 0.1, rtol=1e-6)
    finally:
        await pipe.stop()
        await store.close()
