"""The virtual clock, selection policies, adaptive learning rates and FedBuff (issue 21)."""

from __future__ import annotations

import asyncio
import itertools
import math
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from tsfl.config import ClockSpec, JobSpec, SelectionSpec
from tsfl.pipeline.async_buffer import AsyncBuffer, staleness_weight
from tsfl.pipeline.selection import UniformSelector
from tsfl.pipeline.selection_policies import DeviceBook, build_policy
from tsfl.sim.clock import DeviceProfiles, TraceError, VirtualClock, read_trace
from tsfl.strategies import FedAdam, FedAvg
from tsfl.strategies.schedule import Scheduled, client_lr_scale

IDS = [f"c{i:03d}" for i in range(200)]
SMALL = {"name": "t", "rounds": 3, "seed": 3,
         "data": {"dataset": "synthetic", "synthetic": {"alpha": 1.0, "beta": 1.0}},
         "clients": {"count": 60, "per_round": 6}, "model": {"kind": "logreg"},
         "training": {"lr": 0.05, "batch_size": 10}}


# -- the virtual clock -----------------------------------------------------------------
def test_lognormal_profiles_are_seeded_and_spread():
    spec = ClockSpec(compute_sigma=1.0)
    a, b = DeviceProfiles(spec, IDS, 7), DeviceProfiles(spec, IDS, 7)
    assert np.array_equal(a.compute, b.compute)
    assert not np.array_equal(a.compute, DeviceProfiles(spec, IDS, 8).compute)
    logs = np.log(a.compute / spec.compute_s_per_example)
    assert abs(np.std(logs) - 1.0) < 0.15
    t = a.task_seconds("c000", 100, 2, 4000, 4000)
    p = a.profile("c000")
    assert t == pytest.approx(200 * p.compute_s_per_example + 8000 / p.bandwidth_bytes_s
                              + 2 * p.latency_s)


def test_availability_windows():
    prof = DeviceProfiles(ClockSpec(online_fraction=0.25, period_s=100.0), IDS, 0)
    online = [prof.online("c001", float(t)) for t in range(200)]
    assert sum(online) == 50
    nxt = prof.next_online("c001", 0.0)
    assert prof.online("c001", nxt) and nxt < 100


def test_trace_file_is_validated_and_bounded(tmp_path):
    good = tmp_path / "t.csv"
    good.write_text("compute_s_per_example,bandwidth_mbps,latency_ms\n0.1,10,20\n0.2,5,0\n")
    assert read_trace(good).shape == (2, 3)
    prof = DeviceProfiles(ClockSpec(speeds="trace", trace=str(good)), IDS[:3], 0)
    assert prof.compute.tolist() == [0.1, 0.2, 0.1]
    for body, msg in [("a,b\n1,2\n", "missing column"),
                      ("compute_s_per_example,bandwidth_mbps,latency_ms\nnan,1,1\n", "outside"),
                      ("compute_s_per_example,bandwidth_mbps,latency_ms\n1,0,1\n", "outside"),
                      ("compute_s_per_example,bandwidth_mbps,latency_ms\n1,x,1\n", "number"),
                      ("compute_s_per_example,bandwidth_mbps,latency_ms\n", "no rows")]:
        bad = tmp_path / "bad.csv"
        bad.write_text(body)
        with pytest.raises(TraceError, match=msg):
            read_trace(bad)
    with pytest.raises(ValidationError):
        ClockSpec(speeds="trace", trace="../x.csv")
    with pytest.raises(ValidationError):
        ClockSpec(speeds="trace")


def test_virtual_clock_orders_events():
    clock = VirtualClock()
    clock.schedule(2.0, "b")
    clock.schedule(1.0, "a")
    clock.schedule(2.0, "c")
    assert [clock.pop()[1] for _ in range(3)] == ["a", "b", "c"] and clock.now == 2.0
    with pytest.raises(ValueError):
        clock.schedule(1.0, "late")


def test_sync_rounds_report_simulated_time_and_drop_stragglers():
    import tsfl

    spec = {**SMALL, "simulation": {"clock": {"compute_sigma": 1.0}},
            "round": {"deadline_s": 5.0, "min_updates": 1}}
    res = tsfl.run(spec)
    times = [m["sim_time_s"] for m in res.metrics]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert all(t <= 5.0 * m["round"] + 1e-9 for t, m in zip(times, res.metrics, strict=True))
    over = tsfl.run({**SMALL, "simulation": {"clock": {}},
                     "selection": {"over_selection": 0.5}})
    assert all(m["clients"] == 6 and m["dropped"] == 3 for m in over.metrics)


# -- selection ------------------------------------------------------------------------
def test_uniform_policy_is_todays_draw():
    policy = build_policy(SelectionSpec(), 11, 600.0)
    for r in range(1, 5):
        assert policy.select(r, IDS, 10, DeviceBook()) == UniformSelector(11).select(
            r, IDS, 10)


def test_default_spec_leaves_the_selector_untouched():
    from tsfl.runtime.virtual_time import configure_selection

    class Sel:
        def __init__(self) -> None:
            self.policies: dict = {}

    sel = Sel()
    assert configure_selection(JobSpec(name="x"), None, sel, "j", None) is None
    assert sel.policies == {}


@pytest.mark.parametrize("kind", ["speed", "oort", "stratified"])
def test_policies_pick_distinct_available_devices(kind):
    speeds = {c: float(i) for i, c in enumerate(IDS)}
    hist = {c: np.eye(4)[i % 4] * 10 for i, c in enumerate(IDS)}
    book = DeviceBook(expected_s=speeds.get, online=lambda c: int(c[1:]) % 5 != 0,
                      label_histogram=hist.get)
    for c in IDS[:50]:
        book.report(c, 1, 10, 1.0 + int(c[1:]) / 10)
    policy = build_policy(SelectionSpec(kind=kind, over_selection=0.2), 0, 100.0)
    cohort = policy.select(3, IDS, 20, book)
    assert len(cohort) == 24 == len(set(cohort)) and set(cohort) <= set(IDS)
    assert cohort == policy.select(3, IDS, 20, book)  # seeded per round
    if kind == "speed":
        assert all(book.online(c) and speeds[c] <= 100.0 for c in cohort)
    if kind == "stratified":
        labels = [int(np.argmax(hist[c])) for c in cohort]
        assert sorted(np.bincount(labels).tolist()) == [6, 6, 6, 6]
    if kind == "oort":  # mostly high-utility explored devices, some exploration
        explored = [c for c in cohort if c in book.utility]
        assert 0 < len(explored) < 24


def test_selection_with_dp_is_refused_with_a_reason():
    dp = {"mode": "central", "clip_norm": 1.0, "noise_multiplier": 1.0}
    for sel in ({"kind": "oort"}, {"kind": "speed"}, {"kind": "stratified"},
                {"over_selection": 0.3}):
        with pytest.raises(ValidationError, match="uniformly random sample drawn in secret"):
            JobSpec(name="x", privacy=dp, selection=sel)
    JobSpec(name="x", privacy=dp)  # uniform stays allowed


# -- adaptive learning rates ----------------------------------------------------------
def test_cosine_and_step_schedules():
    cos = Scheduled(FedAvg(server_lr=2.0), "cosine", horizon=10, min_factor=0.1)
    assert cos.factor(0) == pytest.approx(1.0)
    assert cos.factor(5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cos.factor(10) == pytest.approx(0.1) == cos.factor(50)
    warm = Scheduled(FedAvg(), "cosine", horizon=10, warmup=4)
    assert [warm.factor(t) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    step = Scheduled(FedAvg(), "step", step_every=3, gamma=0.5)
    assert [step.factor(t) for t in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]
    x, d = np.zeros(3, np.float32), np.ones(3, np.float32)
    out = cos.aggregate_fit(x, d.copy())
    assert np.allclose(out, 2.0) and cos.step == 1


def test_loss_trend_rule_and_state_round_trip():
    s = Scheduled(FedAdam(server_lr=0.1), "loss_trend", grow=2.0, shrink=0.5, max_factor=4,
                  window=1)  # release to release (blocks: tests/strategies/test_loss_trend.py)
    for loss in (1.0, 0.8, 0.6, 0.4):
        s.observe_loss(loss)
    assert s.factor(0) == 4.0  # grew three times, capped at 4
    s.observe_loss(0.9)
    assert s.factor(0) == 2.0
    s.observe_loss(0.9)  # within tolerance: unchanged
    assert s.factor(0) == 2.0
    s.aggregate_fit(np.zeros(2, np.float32), np.ones(2, np.float32))
    copy = Scheduled(FedAdam(server_lr=0.1), "loss_trend", window=1)
    copy.load_state(s.state())
    assert (copy.trend, copy.step, copy.losses) == (2.0, 1, [0.9])
    assert np.array_equal(copy.inner.state()["m"], s.inner.state()["m"])


def test_client_lr_by_data_size():
    opts = {"reference_examples": 100, "power": 0.5, "min_scale": 0.1, "max_scale": 4,
            "levels_per_octave": 4}
    assert client_lr_scale(100, opts) == 1.0
    assert client_lr_scale(400, opts) == pytest.approx(0.5)
    assert client_lr_scale(1, opts) == 4.0  # clipped
    assert len({client_lr_scale(n, opts) for n in range(50, 200)}) <= 5  # few levels
    with pytest.raises(ValueError):
        client_lr_scale(10, {**opts, "power": math.inf})


def test_adaptive_lr_options_run_end_to_end():
    import tsfl

    res = tsfl.run({**SMALL, "strategy": {"lr_schedule": {"kind": "loss_trend"},
                                          "client_lr": {}}})
    assert res.status == "COMPLETED" and res.final_accuracy is not None
    plain = tsfl.run(SMALL).metrics
    assert [m["train_loss"] for m in res.metrics] != [m["train_loss"] for m in plain]


# -- FedBuff --------------------------------------------------------------------------
def test_staleness_weights():
    assert staleness_weight(7, "constant") == 1.0
    assert staleness_weight(3, "polynomial", a=0.5) == pytest.approx(0.5)
    assert staleness_weight(4, "hinge", a=1.0, b=4) == 1.0
    assert staleness_weight(6, "hinge", a=1.0, b=4) == pytest.approx(1 / 3)


def test_buffer_releases_every_k_with_staleness_and_norm_bound():
    buf = AsyncBuffer(2, buffer=2, max_staleness=1, weighting="polynomial", a=1.0,
                      max_norm=1.0)
    assert buf.offer(np.array([3.0, 4.0], np.float32), 0, 5, 1.0) is None  # clipped to 1
    rel = buf.offer(np.array([0.0, 1.0], np.float32), 0, 5, 3.0)
    assert rel is not None and buf.version == 1 and buf.clipped == 1
    assert np.allclose(rel.mean_delta, [0.3, 0.9]) and rel.train_loss == 2.0
    assert buf.offer(np.ones(2, np.float32), -1, 1) is None and buf.refused == 1  # τ=2 > 1
    buf.offer(np.ones(2, np.float32), 0, 1)  # τ=1: weight 1/2
    rel = buf.offer(np.array([np.nan, 0], np.float32), 1, 1)
    assert rel is None and buf.refused == 2
    rel = buf.offer(np.zeros(2, np.float32), 1, 1)
    assert rel is not None and rel.staleness == [1, 0]
    assert np.allclose(rel.mean_delta, 0.5 * 2 ** -0.5 / 2)  # weight 1/2, clipped to norm 1


def test_buffer_weights_by_examples_like_fedavg():
    """``averaging: examples``: Σ s(τ)·n·Δ / Σ n, so a small device counts as little as
    in a FedAvg round (uniform: FedBuff's (1/K) Σ s(τ)·Δ)."""
    deltas = [(np.array([1.0, 0.0], np.float32), 10), (np.array([0.0, 1.0], np.float32), 30)]
    for by_examples, want in ((True, [0.25, 0.75]), (False, [0.5, 0.5])):
        buf = AsyncBuffer(2, buffer=2, max_staleness=5, weighting="constant",
                          by_examples=by_examples)
        rels = [buf.offer(d, 0, n) for d, n in deltas]
        assert rels[0] is None and np.allclose(rels[1].mean_delta, want)
    buf = AsyncBuffer(2, buffer=2, max_staleness=5, weighting="polynomial", a=1.0,
                      by_examples=True)
    buf.offer(np.ones(2, np.float32), 0, 10)
    buf.offer(np.ones(2, np.float32), 0, 10)  # release 1
    buf.offer(np.ones(2, np.float32), 0, 30)  # τ = 1: weight 1/2
    rel = buf.offer(np.ones(2, np.float32), 1, 10)
    assert np.allclose(rel.mean_delta, (0.5 * 30 + 10) / 40)
    assert JobSpec(name="x", strategy={"mode": "async"}).strategy.fedbuff.averaging == \
        "examples"


def test_async_mode_runs_on_the_virtual_clock():
    import tsfl

    spec = {**SMALL, "rounds": 4, "robust": {"aggregator": "norm_bounding", "max_norm": 5.0,
                                             "min_cosine": None, "max_norm_ratio": None,
                                             "reputation_threshold": 0.0},
            "strategy": {"mode": "async", "fedbuff": {"buffer": 3, "concurrency": 8}}}
    res = tsfl.run(spec)
    assert res.status == "COMPLETED" and len(res.metrics) == 4
    assert all(m["clients"] == 3 for m in res.metrics)
    times = [m["sim_time_s"] for m in res.metrics]
    assert times == sorted(times) and times[0] > 0
    again = tsfl.run(spec)
    assert [m["test_accuracy"] for m in again.metrics] == [
        m["test_accuracy"] for m in res.metrics]


def test_async_refuses_what_it_cannot_honour():
    a = {"mode": "async"}
    with pytest.raises(ValidationError, match="amplification by sampling does not apply"):
        JobSpec(name="x", strategy=a,
                privacy={"mode": "central", "clip_norm": 1.0, "noise_multiplier": 1.0})
    with pytest.raises(ValidationError, match="only norm_bounding"):
        JobSpec(name="x", strategy=a, robust={"aggregator": "median"})
    with pytest.raises(ValidationError, match="exceeds concurrency"):
        JobSpec(name="x", strategy={"mode": "async", "fedbuff": {"buffer": 20,
                                                                 "concurrency": 10}})


def test_run_embedded_dispatches_async_mode(tmp_path):
    from tsfl.runtime.embedded import run_embedded

    spec = JobSpec.model_validate({**SMALL, "rounds": 2, "strategy": {
        "mode": "async", "fedbuff": {"buffer": 2, "concurrency": 10}}})
    res = asyncio.run(run_embedded(spec, tmp_path))
    assert len(res.metrics) == 2 and res.metrics[-1]["model_version"] == 2


def test_async_run_writes_releases_and_audit_to_the_store(tmp_path):
    """An async embedded run persists like a synchronous one: the job, each release as a
    PUBLISHED round with its participants, checkpoint, metrics and a verified audit chain."""
    from tsfl.runtime.embedded import run_embedded
    from tsfl.storage.store import Store

    spec = JobSpec.model_validate({**SMALL, "rounds": 3, "strategy": {
        "mode": "async", "fedbuff": {"buffer": 2, "concurrency": 6, "max_staleness": 1}}})
    res = asyncio.run(run_embedded(spec, tmp_path))
    assert res.database == tmp_path / "tsfl.db" and res.database.exists()

    async def read() -> tuple[Any, ...]:
        async with await Store.open(f"sqlite:///{res.database}") as store:
            return (await store.get_job(res.job_id), await store.list_rounds(res.job_id),
                    await store.list_participants(res.job_id),
                    await store.latest_checkpoint(res.job_id),
                    await store.audit_trail(res.job_id), await store.verify_audit(res.job_id))

    job, rounds, people, ckpt, trail, verified = asyncio.run(read())
    assert job["status"] == "COMPLETED"
    assert [r["number"] for r in rounds] == [1, 2, 3]
    assert all(r["state"] == "PUBLISHED" and r["accepted"] == 2 for r in rounds)
    assert [r["metrics"]["test_accuracy"] for r in rounds] == [
        m["test_accuracy"] for m in res.metrics]
    for number in (1, 2, 3):
        ok = [p for p in people if p["round"] == number and p["status"] == "accepted"]
        assert len(ok) == 2
    stale = [p for p in people if p["status"] == "rejected"]
    assert all("refused by the buffer" in p["reason"] for p in stale)
    assert ckpt["version"] == 3 and np.allclose(ckpt["vector"], res.final_vector)
    kinds = [e["kind"] for e in trail]
    assert kinds[0] == "job.created" and kinds.count("fedbuff.released") == 3
    assert verified[0], verified[1]


def test_several_audit_appends_in_one_transaction_chain(tmp_path):
    """Regression: a sole-writer SQLite store caches the audit chain's head; a second
    append in the same transaction used the stale head (a duplicate seq)."""
    from tsfl.storage.queries.audit import append_audits
    from tsfl.storage.store import Store

    async def go() -> tuple[bool, str]:
        async with await Store.open(f"sqlite:///{tmp_path / 'a.db'}", exclusive=True) as s:
            await s.create_job("j", "j", {}, "0" * 64)
            await s.append_audit("j", "one", {})

            def two(conn: Any) -> None:
                append_audits(conn, "j", [("two", "t", {})])
                append_audits(conn, "j", [("three", "t", {})])

            await s.run_in_transaction(two)
            await s.append_audit("j", "four", {})
            assert [e["seq"] for e in await s.audit_trail("j")] == [0, 1, 2, 3, 4]
            return await s.verify_audit("j")

    ok, why = asyncio.run(go())
    assert ok, why
