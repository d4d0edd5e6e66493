"""DP through the whole embedded pipeline: clipping, noise, ledger, budget, report."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from cli_helpers import tsfl, write_job
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant

from tsfl.bus import topics
from tsfl.config import ConfigError, parse_job
from tsfl.privacy.noise import SeededNoise
from tsfl.privacy.plan import BUDGET_EXHAUSTED, resolve_privacy
from tsfl.runtime.embedded import run_embedded
from tsfl.runtime.report import summarize, write_outputs
from tsfl.sdk.local_dp import apply_local_dp
from tsfl.sdk.privacy_guard import TaskRefused, parse_local_dp
from tsfl.storage import Store
from tsfl.wire.messages import decode_update

BASE = {"name": "dp", "seed": 3, "rounds": 6,
        "clients": {"count": 40, "per_round": 8},
        "model": {"kind": "logreg"},
        "training": {"lr": 0.1, "epochs": 1, "batch_size": 16}}
CENTRAL = {"mode": "central", "clip_norm": 0.5, "noise_multiplier": 0.9, "noise": "seeded"}


def _job(**privacy):
    return parse_job({**BASE, "privacy": privacy})


def _run(tmp_path, spec, name="run"):
    return asyncio.run(run_embedded(spec, tmp_path / name))


async def _ledger_and_audit(db, job_id):
    store = await Store.open(f"sqlite:///{db}")
    try:
        return (await store.privacy_ledger(job_id), await store.audit_trail(job_id),
                await store.list_rounds(job_id), await store.verify_audit(job_id))
    finally:
        await store.close()


def test_central_dp_job_charges_the_ledger_as_dp_accounting_does(tmp_path):
    spec = _job(**CENTRAL)
    res = _run(tmp_path, spec)
    assert res.status == "COMPLETED"
    ledger, audit, _, (ok, _) = asyncio.run(_ledger_and_audit(res.database, res.job_id))
    assert ok and [r["round"] for r in ledger] == list(range(1, 7))
    event = dp_event.PoissonSampledDpEvent(8 / 40, dp_event.GaussianDpEvent(0.9))
    for t, row in enumerate(ledger, start=1):
        ref = pld_privacy_accountant.PLDAccountant().compose(event, t).get_epsilon(1e-5)
        assert row["epsilon"] == pytest.approx(ref, rel=1e-6)
        assert (row["mechanism"], row["noise_multiplier"], row["sampling_rate"],
                row["clip_norm"], row["accountant"]) == ("gaussian", 0.9, 0.2, 0.5, "pld")
    assert sum(e["kind"] == "privacy.charged" for e in audit) == 6
    assert [m["epsilon"] for m in res.metrics] == [r["epsilon"] for r in ledger]
    # the report: summary.privacy, metrics.epsilon, privacy.png
    summary = summarize(res.spec, res.metrics, wall_s=1, job_id=res.job_id,
                        status=res.status, reason=res.reason, ledger=ledger)
    (tmp_path / "out").mkdir()
    write_outputs(tmp_path / "out", res.spec, res.metrics, summary)
    p = json.loads((tmp_path / "out" / "summary.json").read_text())["privacy"]
    assert {k: p[k] for k in ("mechanism", "noise_multiplier", "sampling_rate", "sampling",
                              "clip_norm", "rounds", "accountant", "delta")} == {
        "mechanism": "gaussian", "noise_multiplier": 0.9, "sampling_rate": 0.2,
        "sampling": "poisson", "clip_norm": 0.5, "rounds": 6, "accountant": "pld",
        "delta": 1e-5}
    assert p["epsilon"] == ledger[-1]["epsilon"]
    assert (tmp_path / "out" / "privacy.png").stat().st_size > 10_000


def test_same_seed_same_dp_model_and_noise_really_moves_it(tmp_path):
    """``noise: seeded`` (asked for explicitly) reproduces; the default never does."""
    a = _run(tmp_path, _job(**CENTRAL), "a")
    b = _run(tmp_path, _job(**CENTRAL), "b")
    np.testing.assert_array_equal(a.final_vector, b.final_vector)
    louder = _run(tmp_path, _job(**{**CENTRAL, "noise_multiplier": 3.0}), "c")
    assert np.abs(louder.final_vector - a.final_vector).max() > 1e-3
    secure = {k: v for k, v in CENTRAL.items() if k != "noise"}
    c = _run(tmp_path, _job(**secure), "d")
    d = _run(tmp_path, _job(**secure), "e")
    assert np.abs(c.final_vector - d.final_vector).max() > 1e-4


def test_job_stops_at_its_budget_and_releases_nothing_beyond(tmp_path):
    spec = _job(**CENTRAL, target_epsilon=3.0)
    res = _run(tmp_path, spec)
    assert res.reason == BUDGET_EXHAUSTED and res.status == "COMPLETED"
    ledger, audit, rounds, _ = asyncio.run(_ledger_and_audit(res.database, res.job_id))
    assert ledger and max(r["epsilon"] for r in ledger) <= 3.0
    released = len(ledger)
    assert released < 6
    # the round that would have passed the budget failed, and its model was never stored
    assert rounds[released]["state"] == "FAILED"
    assert rounds[released]["reason"].startswith(BUDGET_EXHAUSTED)
    assert [e for e in audit if e["kind"] == "privacy.budget_exhausted"]

    async def checkpoints():
        store = await Store.open(f"sqlite:///{res.database}")
        try:
            return (await store.latest_checkpoint_meta(res.job_id), await store.count(
                "checkpoints"))
        finally:
            await store.close()

    (version, rnd), count = asyncio.run(checkpoints())
    assert (version, rnd, count) == (released, released, released + 1)


async def _clipped_updates(tmp_path, spec):
    """Run rounds of the embedded pipeline with a tap on the clipped updates."""
    from tsfl.pipeline.roles import LocalPipeline
    from tsfl.runtime.simulation import build_federation
    from tsfl.runtime.transport import InProcessTransport
    from tsfl.sdk.runner import ClientRunner

    fed = build_federation(spec)
    spec = resolve_privacy(spec, fed.workspace.layout.total_size)
    store = await Store.open(f"sqlite:///{tmp_path / 'tap.db'}")
    pipeline = await LocalPipeline.in_memory(store)
    tap = pipeline.bus.consumer([topics.screened_topic(spec.robust.aggregator)], "tap")
    await tap.start()
    try:
        coord = pipeline.coordinator
        await coord.submit_job("j", spec, fed.workspace.layout, fed.initial)
        for c in fed.client_ids:
            await coord.register_device("j", c, "t")
        transport = InProcessTransport(coord)
        for _ in range(2):
            cohort = await coord.open_round("j")
            for c in cohort:
                await ClientRunner(c, fed.clients[c], transport, fed.workspace.layout
                                   ).run_once()
            await coord.wait_round("j")
        seen = []
        while (rec := await asyncio.wait_for(tap.getone(), 2)) is not None:
            seen.append(decode_update(rec.value, fed.workspace.layout,
                                      verify_checksum=False))
            if len(seen) >= 200:
                break
    except TimeoutError:
        pass
    finally:
        await tap.stop()
        await pipeline.stop()
        await store.close()
    return seen


@pytest.mark.parametrize("mechanism,norm", [("gaussian", 2), ("laplace", 1)])
def test_central_clipping_bounds_every_update_on_the_bus(tmp_path, mechanism, norm):
    spec = parse_job({**BASE, "training": {"lr": 0.5, "epochs": 3, "batch_size": 8},
                      "privacy": {**CENTRAL, "mechanism": mechanism, "clip_norm": 0.05}})
    seen = asyncio.run(_clipped_updates(tmp_path, spec))
    assert seen
    assert all(np.linalg.norm(u.delta.astype(np.float64), ord=norm) <= 0.05 * (1 + 1e-5)
               for u in seen)
    assert any(u.metrics["dp_norm"] > 0.05 for u in seen)  # clipping did bite


def test_adaptive_clipping_moves_the_clip_norm_and_records_it(tmp_path):
    spec = _job(**{**CENTRAL, "clip_norm": 100.0,
                   "adaptive_clipping": {"target_quantile": 0.5, "learning_rate": 0.5}})
    res = _run(tmp_path, spec)
    ledger, *_ = asyncio.run(_ledger_and_audit(res.database, res.job_id))
    norms = [r["clip_norm"] for r in ledger]
    assert norms[0] == 100.0 and norms[-1] < 100.0 * np.exp(-0.5 * 0.4 * 4)


def test_local_dp_noises_on_the_device(tmp_path):
    spec = _job(mode="local", clip_norm=0.5, noise_multiplier=2.0)
    res = _run(tmp_path, spec)
    ledger, *_ = asyncio.run(_ledger_and_audit(res.database, res.job_id))
    assert res.status == "COMPLETED" and len(ledger) == 6
    assert all(r["details"]["mode"] == "local" and not r["details"]["amplified"]
               for r in ledger)
    eps = [r["epsilon"] for r in ledger]
    assert eps == sorted(eps)


def test_local_dp_clips_then_noises_and_refuses_bad_settings():
    cfg = {"mechanism": "gaussian", "clip_norm": 1.0, "noise_multiplier": 1e-9}
    out = apply_local_dp(np.full(100, 3.0, np.float32), parse_local_dp(cfg), SeededNoise(1))
    assert np.linalg.norm(out) == pytest.approx(1.0, rel=1e-4)
    # the sensitivity is the device's (2C), whatever the task claims
    loud = parse_local_dp({**cfg, "noise_multiplier": 1.5, "sensitivity_factor": 1e-6})
    noisy = apply_local_dp(np.zeros(10_000, np.float32), loud, SeededNoise(1))
    assert noisy.std() == pytest.approx(1.5 * 2.0, rel=0.03)
    for bad in ({**cfg, "clip_norm": -1}, {**cfg, "mechanism": "magic"},
                {**cfg, "noise_multiplier": float("nan")}, {**cfg, "delta": 2.0},
                {**cfg, "noise_multiplier": True}, "not a mapping"):
        with pytest.raises(TaskRefused):
            parse_local_dp(bad)


@pytest.mark.parametrize("privacy,message", [
    ({"mode": "central", "clip_norm": 1, "noise_multiplier": 1, "delta": 1.0}, "delta"),
    ({"mode": "central", "clip_norm": 1, "target_epsilon": 0}, "target_epsilon must be > 0"),
    ({"mode": "central", "noise_multiplier": 1.0}, "noise without clipping"),
    ({"mode": "central", "clip_norm": 1, "noise_multiplier": 0.3, "target_epsilon": 0.05},
     "unreachable budget"),
    ({"mode": "none", "clip_norm": 1}, "mode is 'none'"),
    ({"mode": "central", "mechanism": "staircase", "clip_norm": 1}, "epsilon_per_round"),
    ({"mode": "central", "mechanism": "laplace", "clip_norm": 1, "noise_multiplier": 1,
      "sampling": "fixed"}, "poisson"),
])
def test_bad_privacy_config_is_rejected_at_submission(tmp_path, privacy, message):
    with pytest.raises(ConfigError) as err:
        resolve_privacy(parse_job({**BASE, "privacy": privacy}), 650)
    assert message in str(err.value)


def test_cli_rejects_an_unreachable_budget_with_exit_2(tmp_path):
    job = write_job(tmp_path / "dp.yaml", privacy={
        "mode": "central", "clip_norm": 1.0, "noise_multiplier": 0.3, "target_epsilon": 0.05})
    proc = tsfl("run", str(job), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "unreachable budget" in proc.stderr


def test_calibration_fills_the_noise_multiplier_from_the_budget():
    spec = resolve_privacy(_job(mode="central", clip_norm=1.0, target_epsilon=4.0), 650)
    z = spec.privacy.noise_multiplier
    ref = pld_privacy_accountant.PLDAccountant().compose(
        dp_event.PoissonSampledDpEvent(0.2, dp_event.GaussianDpEvent(z)), 6).get_epsilon(1e-5)
    assert 3.9 <= ref <= 4.0
