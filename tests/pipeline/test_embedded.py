"""The embedded deployment end to end, against a plain reference loop."""

import asyncio

import numpy as np
import pytest

from tsfl.config import parse_job
from tsfl.pipeline.selection import UniformSelector, client_seed
from tsfl.runtime.embedded import run_embedded
from tsfl.runtime.simulation import build_federation
from tsfl.storage import Store
from tsfl.training.loop import train_epochs

SMALL = {
    "name": "small", "seed": 3, "rounds": 5,
    "clients": {"count": 20, "per_round": 5},
    "model": {"kind": "mlp", "hidden": [16]},
    "training": {"lr": 0.05, "epochs": 1, "batch_size": 16},
}


def run(spec_dict, tmp_path, name="out"):
    spec = parse_job(spec_dict)
    return spec, asyncio.run(run_embedded(spec, tmp_path / name))


def test_embedded_equals_a_plain_training_loop(tmp_path):
    spec, result = run(SMALL, tmp_path)
    fed = build_federation(spec)
    x = fed.initial.astype(np.float64)
    selector = UniformSelector(spec.seed)
    for rnd in range(1, spec.rounds + 1):
        cohort = selector.select(rnd, fed.client_ids, spec.clients.per_round)
        deltas, weights = [], []
        for cid in cohort:
            client = fed.clients[cid]
            fed.workspace.load(x.astype(np.float32))
            rng = np.random.default_rng(client_seed(spec.seed, rnd, cid))
            train_epochs(fed.workspace.module, fed.workspace.params, client.x, client.y,
                         client.settings, rng)
            deltas.append(fed.workspace.vector.astype(np.float64) - x.astype(np.float32))
            weights.append(len(client.y))
        x = x.astype(np.float32) + np.average(deltas, axis=0, weights=weights)
    assert np.max(np.abs(result.final_vector - x)) < 1e-5


def test_same_seed_same_metrics(tmp_path):
    _, a = run(SMALL, tmp_path, "a")
    _, b = run(SMALL, tmp_path, "b")
    strip = [{k: v for k, v in m.items() if k != "wall_s"} for m in a.metrics]
    assert strip == [{k: v for k, v in m.items() if k != "wall_s"} for m in b.metrics]
    np.testing.assert_array_equal(a.final_vector, b.final_vector)
    _, c = run({**SMALL, "seed": 4}, tmp_path, "c")
    assert not np.array_equal(a.final_vector, c.final_vector)


def test_run_persists_rounds_participants_checkpoints_and_audit(tmp_path):
    _spec, result = run(SMALL, tmp_path)

    async def check():
        store = await Store.open(f"sqlite:///{result.database}")
        try:
            rounds = await store.list_rounds(result.job_id)
            assert [r["state"] for r in rounds] == ["PUBLISHED"] * 5
            assert all(r["metrics"]["test_accuracy"] is not None for r in rounds)
            parts = await store.list_participants(result.job_id)
            assert len(parts) == 25 and {p["status"] for p in parts} == {"accepted"}
            assert (await store.get_job(result.job_id))["status"] == "COMPLETED"
            assert await store.count("checkpoints") == 6
            assert await store.verify_audit(result.job_id) == (True, "ok")
        finally:
            await store.close()

    asyncio.run(check())
    m = result.metrics[-1]
    assert m["clients"] == 5 and m["bytes_up"] > 5 * 4 * 1000 and m["bytes_down"] > 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"strategy": {"name": "fedprox", "mu": 0.01}},
        {"strategy": {"name": "fedavgm", "momentum": 0.5}},
        {"strategy": {"name": "fedadam", "server_lr": 0.01}},
        {"strategy": {"name": "fedyogi", "server_lr": 0.01}},
        {"strategy": {"name": "fedadagrad", "server_lr": 0.01}},
        {"model": {"kind": "cnn"}, "training": {"optimizer": "adam", "lr": 0.01}},
        {"data": {"dataset": "breast_cancer", "partition": {"kind": "iid"}},
         "model": {"kind": "logreg"}},
        {"data": {"dataset": "digits", "partition": {"kind": "shards"}}},
        {"data": {"dataset": "synthetic"}, "clients": {"count": 50, "per_round": 5}},
        {"model": {"kind": "custom", "factory": "models_for_tests:tiny_net",
                   "kwargs": {"width": 4}}},
    ],
    ids=lambda o: "-".join(str(v) for d in o.values() for v in d.values()
                           if isinstance(v, str))[:40],
)
def test_each_strategy_model_and_dataset_learns(tmp_path, overrides):
    base = {**SMALL, "rounds": 8, "training": {"lr": 0.1, "epochs": 2, "batch_size": 16}}
    spec_dict = {**base, **overrides}
    if "training" in overrides:
        spec_dict["training"] = {**base["training"], **overrides["training"]}
    _, result = run(spec_dict, tmp_path)
    accs = [m["test_accuracy"] for m in result.metrics]
    losses = [m["test_loss"] for m in result.metrics]
    assert all(np.isfinite(losses))
    assert max(accs) > accs[0] or accs[0] > 0.8
    assert result.status == "COMPLETED"


def test_target_accuracy_stops_early(tmp_path):
    _, result = run({**SMALL, "rounds": 50, "target_accuracy": 0.3,
                     "training": {"lr": 0.1, "epochs": 5, "batch_size": 16}}, tmp_path)
    assert len(result.metrics) < 50 and result.metrics[-1]["test_accuracy"] >= 0.3
    assert "target accuracy" in result.reason


def test_custom_model_errors_are_clear(tmp_path):
    from tsfl.sim.models import ModelError

    for factory, needle in (("models_for_tests:not_a_module", "not a torch.nn.Module"),
                            ("models_for_tests:missing", "has no attribute"),
                            ("no_such_module_xyz:f", "cannot import")):
        spec = parse_job({**SMALL, "model": {"kind": "custom", "factory": factory}})
        with pytest.raises(ModelError, match=needle):
            build_federation(spec)
