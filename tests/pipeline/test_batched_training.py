"""Batched cohort training: equal to the per-client loop, wired into the embedded run,
and a seeded population that costs memory per cohort, not per client."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
import torch
from torch import nn

import tsfl.runtime.cohort as cohort_module
from tsfl.config import SyntheticSpec, parse_job
from tsfl.runtime.embedded import run_embedded
from tsfl.runtime.simulation import build_federation
from tsfl.sim.datasets import generate_synthetic
from tsfl.sim.models import mlp, small_cnn
from tsfl.sim.population import PopulationData, RecordCache, SyntheticPopulation
from tsfl.training.batched import Member, plan_chunks, train_cohort, unbatchable
from tsfl.training.flat import FlatModule
from tsfl.training.loop import TrainSettings, train_epochs

# record counts around the batch size 8: one record, a short batch, exact, one over, ...
SIZES = [1, 7, 8, 9, 16, 23, 40, 3]


def _members(sizes: list[int], shape: tuple[int, ...], classes: int, seed: int = 0
             ) -> list[Member]:
    g = np.random.default_rng(seed)
    return [Member(torch.from_numpy(g.normal(size=(n, *shape)).astype(np.float32)),
                   torch.from_numpy(g.integers(0, classes, n)), 1000 + k)
            for k, n in enumerate(sizes)]


def _sequential(flat: FlatModule, start: np.ndarray, members: list[Member],
                settings: TrainSettings) -> tuple[np.ndarray, np.ndarray]:
    vectors, losses = [], []
    for m in members:
        flat.load(start)
        losses.append(train_epochs(flat.module, flat.params, m.x, m.y, settings,
                                   np.random.default_rng(m.seed)))
        vectors.append(flat.vector.copy())
    return np.stack(vectors), np.array(losses)


@pytest.mark.parametrize("settings", [
    TrainSettings(lr=0.1, epochs=2, batch_size=8),
    TrainSettings(lr=0.05, momentum=0.9, weight_decay=1e-3, epochs=3, batch_size=8,
                  proximal_mu=0.1),
    TrainSettings(optimizer="adam", lr=0.01, weight_decay=1e-4, epochs=2, batch_size=8),
], ids=["sgd", "momentum-wd-prox", "adam"])
@pytest.mark.parametrize("hidden", [[], [32, 16]], ids=["logreg", "mlp"])
def test_batched_equals_the_sequential_loop(hidden, settings):
    torch.manual_seed(0)
    flat = FlatModule(mlp(12, 5, hidden))
    start = flat.vector.copy()
    members = _members(SIZES, (12,), 5)
    out = train_cohort(flat.module, flat.layout, start, members, settings)
    np.testing.assert_array_equal(flat.vector, start)  # the module's own weights untouched
    vectors, losses = _sequential(flat, start, members, settings)
    assert np.max(np.abs(out.vectors - vectors)) < 1e-5
    assert np.max(np.abs(out.losses - losses)) < 1e-5
    assert np.all(np.abs(vectors - start).max(axis=1) > 1e-4)  # every client moved


def test_batched_cnn_and_chunks_of_bounded_memory():
    torch.manual_seed(1)
    flat = FlatModule(small_cnn((1, 8, 8), 10))
    start = flat.vector.copy()
    members = _members([5, 17, 9, 30, 2, 11], (64,), 10, seed=2)
    s = TrainSettings(lr=0.05, epochs=1, batch_size=8)
    tiny = 200_000  # a few members per chunk
    sizes = [len(m.y) for m in members]
    assert len(plan_chunks(sizes, 64 * 4, flat.layout.total_size, s, tiny)) > 1
    chunked = train_cohort(flat.module, flat.layout, start, members, s, max_bytes=tiny)
    whole = train_cohort(flat.module, flat.layout, start, members, s)
    vectors, losses = _sequential(flat, start, members, s)
    assert np.max(np.abs(chunked.vectors - vectors)) < 1e-5
    assert np.max(np.abs(whole.vectors - vectors)) < 1e-5
    assert np.max(np.abs(chunked.losses - losses)) < 1e-5


def test_what_cannot_be_batched_is_named():
    def reason(module: nn.Module) -> str | None:
        return unbatchable(module, FlatModule(module).layout)

    assert reason(mlp(4, 3, [8])) is None
    assert "buffers" in reason(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8),
                                             nn.Linear(8, 3)))
    assert "Dropout" in reason(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5),
                                             nn.Linear(8, 3)))


SMALL = {
    "name": "batched", "seed": 5, "rounds": 3,
    "clients": {"count": 24, "per_round": 12},
    "model": {"kind": "mlp", "hidden": [16]},
    "training": {"lr": 0.05, "epochs": 2, "batch_size": 16},
}


def _run(spec_dict: dict, tmp_path, name: str):
    return asyncio.run(run_embedded(parse_job(spec_dict), tmp_path / name))


def _comparable(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "wall_s"} for m in metrics]


@pytest.mark.parametrize("overrides", [
    {},
    {"data": {"dataset": "synthetic"}, "clients": {"count": 60, "per_round": 20},
     "model": {"kind": "logreg"}, "strategy": {"name": "fedprox", "mu": 0.01},
     "training": {"lr": 0.05, "momentum": 0.9, "epochs": 1, "batch_size": 8}},
    {"attacks": {"kind": "sign_flip", "fraction": 0.25},
     "robust": {"aggregator": "median", "num_malicious": 2},
     "privacy": {"mode": "local", "clip_norm": 1.0, "noise_multiplier": 0.3,
                 "noise": "seeded"}},
], ids=["digits-mlp", "synthetic-fedprox-momentum", "attack-local-dp"])
def test_embedded_batched_equals_one_client_at_a_time(tmp_path, monkeypatch, overrides):
    calls = []
    real = cohort_module.train_cohort
    monkeypatch.setattr(cohort_module, "train_cohort",
                        lambda *a, **k: calls.append(len(a[3])) or real(*a, **k))
    spec = {**SMALL, **overrides}
    on = _run({**spec, "simulation": {"batched": "auto"}}, tmp_path, "on")
    assert calls and sum(calls) == spec["rounds"] * spec["clients"]["per_round"]
    calls.clear()
    off = _run({**spec, "simulation": {"batched": "off"}}, tmp_path, "off")
    assert not calls
    assert on.job_id == off.job_id  # the switch is not part of the job's identity
    assert np.max(np.abs(on.final_vector - off.final_vector)) < 1e-5
    a, b = _comparable(on.metrics), _comparable(off.metrics)
    assert [sorted(m) for m in a] == [sorted(m) for m in b]
    for ma, mb in zip(a, b, strict=True):
        for key, value in ma.items():
            if isinstance(value, float):
                assert value == pytest.approx(mb[key], abs=1e-5), key
            else:
                assert value == mb[key], key


@pytest.mark.parametrize("overrides, needle", [
    ({"simulation": {"batched": "off"}}, "simulation.batched is off"),
    ({"training": {"lr": 0.05, "epochs": 1, "batch_size": 16,
                   "dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}},
     "dp_sgd"),
    ({"model": {"kind": "custom", "factory": "models_for_tests:tiny_net",
                "kwargs": {"width": 4}}}, "custom model"),
], ids=["off", "dp-sgd", "custom"])
def test_fallback_is_logged_once_and_trains_alone(tmp_path, monkeypatch, caplog, overrides,
                                                  needle):
    monkeypatch.setattr(cohort_module, "train_cohort",
                        lambda *a, **k: pytest.fail("must not batch"))
    with caplog.at_level(logging.INFO, logger="tsfl.sim.batched"):
        result = _run({**SMALL, **overrides}, tmp_path, "fallback")
    assert result.status == "COMPLETED"
    said = [r.getMessage() for r in caplog.records if r.name == "tsfl.sim.batched"]
    assert len(said) == 1 and needle in said[0] and "one at a time" in said[0]


def test_a_failing_batch_falls_back_once(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(cohort_module, "train_cohort", broken)
    with caplog.at_level(logging.INFO, logger="tsfl.sim.batched"):
        broke = _run(SMALL, tmp_path, "broken")
    off = _run({**SMALL, "simulation": {"batched": "off"}}, tmp_path, "off")
    np.testing.assert_array_equal(broke.final_vector, off.final_vector)
    said = [r for r in caplog.records if r.name == "tsfl.sim.batched"]
    assert len(said) == 1 and "no batching rule" in said[0].getMessage()


def test_small_cohorts_train_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(cohort_module, "train_cohort",
                        lambda *a, **k: pytest.fail("below MIN_BATCH"))
    per_round = cohort_module.MIN_BATCH - 1
    result = _run({**SMALL, "clients": {"count": 20, "per_round": per_round}}, tmp_path, "s")
    assert result.metrics[-1]["clients"] == per_round


SYN = SyntheticSpec(alpha=1.0, beta=1.0, min_samples=20, max_samples=200,
                    mean_samples=3.5, sigma_samples=0.5)


def test_population_materialises_what_the_eager_generator_concatenates():
    eager = generate_synthetic(SYN, 40, 0.2, 7)
    population = SyntheticPopulation(SYN, 40, 0.2, 7)
    for k in (0, 13, 39):
        x, y = population.train(k)
        part = eager.natural_partition[k]
        np.testing.assert_array_equal(x, eager.x_train[part])
        np.testing.assert_array_equal(y, eager.y_train[part])
        assert population.num_examples(k) == len(part)
    data = PopulationData(population)
    np.testing.assert_array_equal(data.x_test, eager.x_test)
    # a client's records do not depend on the population's size
    np.testing.assert_array_equal(SyntheticPopulation(SYN, 10**6, 0.2, 7).train(13)[0],
                                  population.train(13)[0])


def test_a_million_client_population_is_built_per_cohort():
    spec = parse_job({"name": "million", "seed": 0, "data": {"dataset": "synthetic",
                      "synthetic": SYN.model_dump()},
                      "clients": {"count": 1_000_000, "per_round": 100},
                      "model": {"kind": "logreg"}})
    fed = build_federation(spec)
    assert len(fed.client_ids) == 1_000_000 and fed.partitions == []
    assert fed.clients.made == 0 and len(fed.clients) == 1_000_000
    assert len(fed.y_test) < 5_000 * 200  # the test set is a bounded sample of clients
    cohort = fed.client_ids[::10_000]
    records = [fed.clients[c].x for c in cohort]
    assert fed.clients.made == len(cohort)
    cache = fed.clients[cohort[0]].records.cache
    assert len(cache) == len(cohort)  # only the cohort's records exist
    assert cache.bytes == sum(x.numel() * 4 + len(x) * 8 for x in records)
    assert "client-999999" in fed.clients and "client-1000000" not in fed.clients


def test_record_cache_evicts_and_regenerates_identically():
    population = SyntheticPopulation(SYN, 100, 0.2, 3)
    cache = RecordCache(max_bytes=50_000)

    def make(k: int):
        x, y = population.train(k)
        return torch.from_numpy(x), torch.from_numpy(y)

    first = cache.get(0, lambda: make(0))[0].clone()
    for k in range(1, 40):
        cache.get(k, lambda k=k: make(k))
    assert cache.bytes <= 50_000 + first.numel() * 12 and cache.peek(0) is None
    torch.testing.assert_close(cache.get(0, lambda: make(0))[0], first, rtol=0, atol=0)


def test_scale_benchmark_runs_and_its_paths_agree():
    from benchmarks import scale_embedded

    row = scale_embedded.training_row("mlp-64", scale_embedded.MODELS["mlp-64"], 40)
    assert row["clients"] == 40 and row["max_abs_diff"] < 1e-5 and row["speedup"] > 0
    memory = scale_embedded.memory_row(20_000, 50)
    assert memory["clients_made"] == 50 and memory["peak_rss"] >= memory["floor_rss"]
