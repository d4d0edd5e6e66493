"""Federated evaluation and the final model, as a device and an operator see them: devices
evaluate each model they are sent and the round's metrics gain the devices' example-
weighted means; a device that lies about its example count moves them by a bounded
amount; a device outside the cohort, a repeat or a malformed report is refused; a device
gets the job's final model when the job ends."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import yaml
from grpc_stack import coordinator_grpc

from tsfl.config import ConfigError, parse_job
from tsfl.pipeline.federated_eval import (
    WEIGHT_CAP,
    EvaluationRefused,
    VersionEvaluation,
    check_report,
)
from tsfl.runtime.simulation import build_federation
from tsfl.sdk.grpc_client import run_client
from tsfl.wire.messages import LATEST_MODEL

SPEC = {"name": "fed-eval", "seed": 3, "rounds": 3,
        "clients": {"count": 4, "per_round": 4}, "model": {"kind": "logreg"},
        "training": {"lr": 0.1, "epochs": 1, "batch_size": 16},
        "evaluation": {"server": False}}  # the coordinator cannot evaluate: devices do


def test_the_summary_is_the_example_weighted_mean_with_a_capped_weight():
    ev = VersionEvaluation(1)
    assert ev.add("a", 1.0, 100, {"accuracy": 0.5})
    assert ev.add("b", 3.0, 300, {"accuracy": 0.9})
    assert ev.add("c", 2.0, 100, {"accuracy": 0.7, "rare": 1.0})
    assert not ev.add("a", 9.0, 100, {"accuracy": 0.0})  # a repeat is ignored
    s = ev.summary()
    assert s["fed_loss"] == pytest.approx((100 * 1 + 300 * 3 + 100 * 2) / 500)
    assert s["fed_accuracy"] == pytest.approx((100 * 0.5 + 300 * 0.9 + 100 * 0.7) / 500)
    assert "fed_rare" not in s  # carried by fewer than half the reports
    assert s["fed_examples"] == 500 and s["fed_devices"] == 3


def test_a_lying_minority_moves_the_metrics_no_further_than_the_honest_spread():
    ev = VersionEvaluation(1)
    honest = [(0.40, 0.80), (0.50, 0.75), (0.45, 0.78), (0.55, 0.72), (0.50, 0.76),
              (0.42, 0.81), (0.48, 0.74), (0.52, 0.77)]
    for i, (loss, acc) in enumerate(honest):
        ev.add(f"h{i}", loss, 100, {"accuracy": acc})
    ev.add("liar", 1e6, 10_000_000, {"accuracy": 0.0})  # the largest values allowed
    s = ev.summary()
    losses, accs = [h[0] for h in honest], [h[1] for h in honest]
    q1, q3 = np.percentile([*losses, 1e6], [25, 75])
    assert min(losses) <= s["fed_loss"] <= q3 + 1.5 * (q3 - q1) < 1.0
    q1, q3 = np.percentile([*accs, 0.0], [25, 75])
    assert max(accs) >= s["fed_accuracy"] >= q1 - 1.5 * (q3 - q1) > 0.6
    # its weight is capped too: WEIGHT_CAP × the median count, not 10^7
    assert s["fed_examples"] == 8 * 100 + WEIGHT_CAP * 100


@pytest.mark.parametrize("loss,n,metrics", [
    (float("nan"), 10, {}), (-1.0, 10, {}), (1.0, 0, {}), (1.0, 10**8, {}),
    (1.0, 10, {"accuracy": 1.5}), (1.0, 10, {f"m{i}": 0.0 for i in range(9)}),
    (1.0, 10, {"x" * 65: 0.0}), (1.0, 10, {"m": float("inf")}), (1e7, 10, {}),
    (1.0, 10, {"loss": 0.0}), (1.0, 10, {"devices": 1e6}), (1.0, 10, {"<img>": 0.0})])
def test_malformed_reports_are_refused(loss, n, metrics):
    with pytest.raises(EvaluationRefused):
        check_report(loss, n, metrics)


def test_devices_evaluating_is_refused_where_privacy_covers_no_metric():
    for extra in ({"privacy": {"mode": "central", "clip_norm": 1.0, "noise_multiplier": 1.0}},
                  {"crypto": {"mode": "secagg"}}):
        with pytest.raises(ConfigError, match=r"evaluation\.federated 'on'"):
            parse_job({**SPEC, **extra, "evaluation": {"federated": "on"}})
    parse_job({**SPEC, "evaluation": {"federated": "off"}})


def test_devices_evaluate_each_model_and_get_the_final_one(tmp_path):
    spec = parse_job(SPEC)
    fed = build_federation(spec)

    async def scenario():
        async with coordinator_grpc(tmp_path / "fed.db") as stack:
            stack.jobs.coordinator.evaluate_releases = True  # as the coordinator service
            job = (await stack.jobs.submit(yaml.safe_dump(SPEC), "enrol")).job_id
            # no cohort yet: nobody's report is taken
            with pytest.raises(EvaluationRefused) as early:
                await stack.jobs.coordinator.report_evaluation(
                    fed.client_ids[0], job, 0, 0.1, 10, {"accuracy": 1.0})
            results = await asyncio.wait_for(asyncio.gather(*(
                run_client(stack.address, fed.clients[cid], job_id=job, device_id=cid,
                           token="enrol", layout=fed.workspace.layout, offload=False)
                for cid in fed.client_ids)), 120)
            for _ in range(100):  # metrics are written beside the rounds
                rounds = await stack.store.list_rounds(job)
                if all("fed_loss" in (r["metrics"] or {}) for r in rounds[:-1]):
                    break
                await asyncio.sleep(0.1)
            # after the job: a report is refused (the job asks nothing more)
            with pytest.raises(EvaluationRefused) as refused:
                await stack.jobs.coordinator.report_evaluation(
                    fed.client_ids[0], job, 3, 0.1, 10, {})
            final = await stack.store.latest_checkpoint(job)
            audit = [e for e in await stack.store.audit_trail(job)
                     if e["kind"] == "device.evaluation"]
            return early.value.code, refused.value.code, results, rounds, final, audit

    early, code, results, rounds, final, audit = asyncio.run(scenario())
    assert early == "not_in_cohort" and code == "not_requested"
    assert [r["number"] for r in rounds] == [1, 2, 3]
    # rounds 1 and 2 released the models that rounds 2 and 3 evaluated on device
    for r in rounds[:2]:
        m = r["metrics"]
        assert m["fed_devices"] == 4 and 0 <= m["fed_accuracy"] <= 1 and m["fed_loss"] > 0
        assert "test_accuracy" not in m  # the coordinator did not evaluate: devices did
        assert m["train_loss"] is not None  # the release's own metrics are kept
    # each device evaluated versions 0, 1 and 2 once (audited with who said what)
    assert sorted((e["payload"]["device_id"], e["payload"]["model_version"]) for e in audit) \
        == sorted((cid, v) for cid in fed.client_ids for v in range(3))
    # every device got the final model, bit for bit the released checkpoint
    for result in results:
        assert result.contributed == 3 and len(result.outcomes) == 3
        assert result.final_version == final["version"] == 3
        np.testing.assert_array_equal(result.final_model, final["vector"])
        params = result.final_parameters(fed.workspace.layout)
        assert sum(p.size for p in params) == fed.workspace.layout.total_size


def test_a_finished_jobs_model_is_served_only_as_the_final_version(tmp_path):
    async def scenario():
        async with coordinator_grpc(tmp_path / "final.db") as stack:
            coordinator = stack.jobs.coordinator
            job = (await stack.jobs.submit(yaml.safe_dump({**SPEC, "rounds": 1}),
                                           "enrol")).job_id
            fed = build_federation(parse_job({**SPEC, "rounds": 1}))
            await asyncio.wait_for(asyncio.gather(*(
                run_client(stack.address, fed.clients[cid], job_id=job, device_id=cid,
                           token="enrol", layout=fed.workspace.layout, offload=False)
                for cid in fed.client_ids)), 120)
            latest = await coordinator.download_model(job, LATEST_MODEL)
            same = await coordinator.download_model(job, 1)
            with pytest.raises(LookupError, match="ended at v1"):
                await coordinator.download_model(job, 0)
            with pytest.raises(LookupError, match="unknown job"):
                await coordinator.download_model("no-such-job", LATEST_MODEL)
            return latest, same

    latest, same = asyncio.run(scenario())
    assert latest == same

