"""Byzantine robustness end to end: attacks in simulation, the byzantine stage's verdicts
(persisted, audited, alerting), coordinate-wise rules in the aggregator, the client
history surviving a restart, and refusals at submission."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from scipy.stats import norm

from tsfl.bus.memory import MemoryBus
from tsfl.config import AttackSpec, ConfigError, parse_job
from tsfl.pipeline.byzantine import Byzantine
from tsfl.robust.attacks import UpdateAttack, add_trigger, alie_z, flip_labels
from tsfl.runtime.embedded import run_embedded
from tsfl.storage import Store

BASE = {"name": "byz", "seed": 0, "rounds": 8,
        "data": {"dataset": "digits", "partition": {"kind": "iid"}},
        "clients": {"count": 20, "per_round": 20}, "model": {"kind": "logreg"},
        "training": {"lr": 0.5, "epochs": 5, "batch_size": 32}}


def _job(**extra):
    return parse_job({**BASE, **extra})


def _run(tmp_path, spec, name="run"):
    return asyncio.run(run_embedded(spec, tmp_path / name))


async def _read(db, job_id):
    store = await Store.open(f"sqlite:///{db}")
    try:
        return (await store.list_participants(job_id), await store.audit_trail(job_id),
                await store.load_robust_state(job_id))
    finally:
        await store.close()


def test_wfagg_refuses_sign_flippers_and_records_why(tmp_path):
    spec = _job(robust={"aggregator": "wfagg", "num_malicious": 4},
                attacks={"kind": "sign_flip", "fraction": 0.2})
    result = _run(tmp_path, spec)
    assert result.status == "COMPLETED"
    r = result.robustness
    assert r["attack"] == "sign_flip" and r["aggregator"] == "wfagg"
    assert r["malicious_updates"] == 4 * 8 and r["judged_updates"] == 20 * 8
    assert r["tpr"] >= 0.9 and r["fpr"] <= 0.1
    participants, audit, state = asyncio.run(_read(result.database, result.job_id))
    judged = [p for p in participants if (p["metrics"] or {}).get("verdict")]
    assert len(judged) == 160
    refused = [p for p in judged if p["metrics"]["verdict"]["weight"] == 0]
    assert refused and all(p["status"] == "rejected" for p in refused)
    assert all(p["score"] == p["metrics"]["verdict"]["weight"] for p in judged)
    assert all(p["metrics"]["verdict"]["reason"].startswith("refused") for p in refused)
    assert any("opposed" in p["metrics"]["verdict"]["reason"] for p in refused)
    filtered = [p for p in judged if "distance" in p["metrics"]["verdict"]["scores"]]
    assert filtered and {"distance", "cosine", "temporal", "reputation", "norm"} <= set(
        filtered[0]["metrics"]["verdict"]["scores"])
    kinds = [a["kind"] for a in audit]
    assert kinds.count("byzantine.refused") == len(refused)
    assert "byzantine.alert" in kinds  # 20% of every round is flagged, above 10%
    assert state is not None and state[0] == 9  # the history is the input to round 9


def test_attack_free_and_attacked_wfagg_reach_similar_accuracy(tmp_path):
    clean = _run(tmp_path, _job(), "clean")
    attacked = _run(tmp_path, _job(robust={"aggregator": "wfagg", "num_malicious": 4},
                                   attacks={"kind": "sign_flip", "fraction": 0.2}), "wf")
    undefended = _run(tmp_path, _job(attacks={"kind": "scaling", "fraction": 0.2,
                                              "scale": 20.0}), "plain")

    def final(res):
        return res.metrics[-1]["test_accuracy"]

    assert final(attacked) >= final(clean) - 0.05
    assert final(undefended) < final(clean) - 0.2  # the attack is real without a defence


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "bulyan", "multikrum",
                                  "fltrust"])
def test_robust_rules_hold_against_scaling(tmp_path, rule):
    extra = {"beta": 0.25} if rule == "trimmed_mean" else {}
    spec = _job(rounds=6, robust={"aggregator": rule, "num_malicious": 4, **extra},
                attacks={"kind": "scaling", "fraction": 0.2, "scale": 20.0})
    result = _run(tmp_path, spec, rule)
    assert result.status == "COMPLETED"
    assert result.metrics[-1]["test_accuracy"] > 0.8


def test_a_restarted_byzantine_stage_keeps_client_history(tmp_path):
    spec = _job(rounds=4, robust={"aggregator": "wfagg", "num_malicious": 4})
    result = _run(tmp_path, spec)

    async def reload():
        store = await Store.open(f"sqlite:///{result.database}")
        try:
            role = Byzantine(MemoryBus(), store)
            job = await role._job(result.job_id)
            return job
        finally:
            await store.close()

    job = asyncio.run(reload())
    assert job is not None and job.next_round == 5
    assert len(job.history.clients) == 20
    assert all(rec.drifts == 3 for rec in job.history.clients.values())
    assert set(job.reputation.scores) == set(job.history.clients)


@pytest.mark.parametrize("extra,message", [
    ({"robust": {"aggregator": "krum", "num_malicious": 2},
      "privacy": {"mode": "central", "clip_norm": 1.0, "noise_multiplier": 1.0}},
     "sensitivity"),
    ({"robust": {"aggregator": "bulyan", "num_malicious": 5}}, "4·num_malicious"),
    ({"robust": {"aggregator": "wfagg", "num_malicious": 10}}, "below half"),
    ({"robust": {"aggregator": "norm_bounding"}}, "max_norm"),
    ({"attacks": {"kind": "sign_flip"}}, "fraction"),
    ({"robust": {"aggregator": "wfagg", "num_malicious": 2}, "crypto": {"mode": "he"}},
     "no update is ever in the clear"),
    ({"robust": {"aggregator": "krum", "num_malicious": 2}, "crypto": {"mode": "secagg"}},
     "drop the robust rule"),
    ({"privacy": {"mode": "central", "clip_norm": 1.0, "noise_multiplier": 1.0},
      "crypto": {"mode": "secagg"}}, "clip on the device"),
])
def test_bad_robust_config_is_refused(extra, message):
    with pytest.raises(ConfigError, match=message):
        _job(**extra)


def test_update_attacks_follow_their_papers():
    rng = np.random.default_rng(0)
    honest = rng.normal(size=(4, 30)).astype(np.float32)
    ipm = UpdateAttack(AttackSpec(kind="ipm", fraction=0.2, epsilon=0.5), 20, 4, 0)
    for h in honest:
        out = ipm(h, 3)
    np.testing.assert_allclose(out, -0.5 * honest.mean(axis=0), rtol=1e-6)
    alie = UpdateAttack(AttackSpec(kind="alie", fraction=0.2), 20, 4, 0)
    for h in honest:
        out = alie(h, 3)
    z = alie_z(20, 4)  # s = ⌊20/2 + 1⌋ − 4 = 7 → Φ(z) = 13/20
    assert z == pytest.approx(norm.ppf(13 / 20))
    np.testing.assert_allclose(out, honest.mean(axis=0) - z * honest.std(axis=0), rtol=1e-5)
    assert np.all(UpdateAttack(AttackSpec(kind="sign_flip", fraction=0.1), 20, 2, 0)(
        honest[0], 1) == -honest[0])


def test_data_attacks():
    y = np.array([0, 3, 9])
    assert list(flip_labels(y, 10)) == [9, 6, 0]
    x = np.zeros((2, 64), dtype=np.float32)
    x[0, 0] = 16.0
    out = add_trigger(x, (1, 8, 8)).reshape(2, 8, 8)
    assert np.all(out[:, -2:, -2:] == 16.0) and out[:, :6, :6].sum() == 16.0


def test_backdoor_success_rate_is_reported(tmp_path):
    spec = _job(rounds=4, attacks={"kind": "backdoor", "fraction": 0.3, "target_label": 0})
    r = _run(tmp_path, spec).robustness
    assert r["attack"] == "backdoor" and 0.0 <= r["backdoor_success_rate"] <= 1.0


@pytest.mark.slow
def test_bench_robustness_writes_its_table_and_heatmap_at_a_small_size(tmp_path):
    from cli_helpers import tsfl

    proc = tsfl("bench", "robustness", "--quick", "--rounds", "3", "--out", str(tmp_path),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "robustness.md").read_text()
    assert "| wfagg |" in table and "sign_flip" in table
    data = json.loads((tmp_path / "robustness.json").read_text())
    cell = data["results"]["iid"]["wfagg"]["sign_flip"]
    assert cell["status"] == "COMPLETED" and 0 <= cell["tpr"] <= 1
    assert (tmp_path / "robustness.png").stat().st_size > 10_000
