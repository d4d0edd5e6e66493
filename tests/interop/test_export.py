"""`tsfl export`: released models as safetensors, ONNX and TorchScript that load in plain
torch / onnxruntime with the predictions of the model tsfl released, a model card of
their provenance, from a `tsfl run` directory and from a deployment's database; the
`tsfl.registry` announcements of each version (embedded and distributed), which the
card's SHA-256 matches."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch
import yaml

onnx = pytest.importorskip("onnx", reason="installed with the [interop] extra")
ort = pytest.importorskip("onnxruntime", reason="installed with the [interop] extra")
safetensors_torch = pytest.importorskip("safetensors.torch")

from grpc_stack import coordinator_grpc  # noqa: E402

from tsfl.bus import topics  # noqa: E402
from tsfl.cli.main import main  # noqa: E402
from tsfl.config import parse_job  # noqa: E402
from tsfl.pipeline.registry import parse_registry_event, vector_sha256  # noqa: E402
from tsfl.runtime.embedded import run_embedded  # noqa: E402
from tsfl.runtime.simulation import build_federation  # noqa: E402
from tsfl.sdk.grpc_client import run_client  # noqa: E402
from tsfl.sim.datasets import load_dataset  # noqa: E402
from tsfl.sim.models import build_model  # noqa: E402
from tsfl.storage import Store  # noqa: E402
from tsfl.training.flat import FlatModule  # noqa: E402

SPEC = {"name": "export", "seed": 2, "rounds": 3, "clients": {"count": 8, "per_round": 4},
        "model": {"kind": "mlp", "hidden": [32]}, "data": {"partition": {"kind": "iid"}},
        "training": {"lr": 0.1, "epochs": 1, "batch_size": 16}}


def _run(spec: dict, out):
    return asyncio.run(run_embedded(parse_job(spec), out))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = _run(SPEC, out)
    assert result.status == "COMPLETED"
    return out, result


def reference(spec: dict, vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The test split and the logits of the released vector in tsfl's own module."""
    job = parse_job(spec)
    data = load_dataset(job.data, job.clients.count)
    flat = FlatModule(build_model(job.model, data.input_shape, data.num_classes, job.seed))
    flat.load(vector)
    with torch.no_grad():
        return data.x_test, flat.module.eval()(torch.from_numpy(data.x_test)).numpy()


def _export(source: str, fmt: str, out, *extra: str) -> dict:
    assert main(["export", source, "--format", fmt, "--out", str(out), *extra]) == 0
    return json.loads((out / "model_card.json").read_text())


def test_onnx_passes_the_checker_and_predicts_as_torch(run, tmp_path):
    out, result = run
    card = _export(str(out), "onnx", tmp_path)
    model = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    x, logits = reference(SPEC, result.final_vector)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    np.testing.assert_allclose(got, logits, rtol=1e-5, atol=1e-5)
    assert (got.argmax(1) == logits.argmax(1)).all()
    assert card["model"]["input"]["shape"] == ["batch", 64]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["tsfl.sha256"] == card["model"]["sha256"] == vector_sha256(result.final_vector)


def test_safetensors_and_torchscript_load_in_plain_torch(run, tmp_path):
    out, result = run
    x, logits = reference(SPEC, result.final_vector)
    _export(str(out), "safetensors", tmp_path / "st")
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 10))
    net.load_state_dict(safetensors_torch.load_file(str(tmp_path / "st/model.safetensors")))
    with torch.no_grad():
        np.testing.assert_array_equal(net(torch.from_numpy(x)).numpy(), logits)
    _export(str(out), "torchscript", tmp_path / "ts")
    scripted = torch.jit.load(str(tmp_path / "ts/model.torchscript.pt"))
    with torch.no_grad():
        np.testing.assert_allclose(scripted(torch.from_numpy(x)).numpy(), logits, atol=1e-6)


def test_the_model_card_holds_the_provenance(run, tmp_path):
    out, result = run
    card = _export(str(out), "safetensors", tmp_path, "--version", "2")
    assert (card["version"], card["round"], card["status"]) == (2, 2, "COMPLETED")
    assert card["spec_sha256"] == result.spec.sha256()
    assert card["training"]["rounds_published"] == 2
    assert card["participants"]["devices_enrolled"] == 8
    assert 4 <= card["participants"]["distinct_accepted"] <= 8
    assert card["privacy"]["mode"] == "none" and card["privacy"]["epsilon"] is None
    assert card["robust"] == {"rule": "none", "refusals": 0, "refusal_reasons": {}}
    assert card["crypto"]["mode"] == "none"
    assert 0 < card["metrics"]["test_accuracy"] <= 1

    async def audit():
        store = await Store.open(f"sqlite:///{out / 'tsfl.db'}", migrate_schema=False)
        try:
            return (await store.audit_trail(result.job_id),
                    await store.latest_checkpoint(result.job_id, 2))
        finally:
            await store.close()

    trail, v2 = asyncio.run(audit())
    assert card["audit"] == {"head_hash": trail[-1]["hash"], "events": len(trail),
                             "chain_verified": True}
    # every release was announced on tsfl.registry (audited), the card names the same model
    announced = {e["payload"]["version"]: e["payload"]["sha256"] for e in trail
                 if e["kind"] == "registry.announced"}
    assert sorted(announced) == [1, 2, 3]
    assert announced[2] == card["model"]["sha256"] == vector_sha256(v2["vector"])
    text = (tmp_path / "model_card.md").read_text()
    assert card["spec_sha256"] in text and "version 2" in text


def test_a_dp_models_card_gives_its_budget_and_withholds_who_took_part(tmp_path):
    spec = {**SPEC, "name": "export-dp", "rounds": 2,
            "privacy": {"mode": "central", "clip_norm": 1.0, "noise_multiplier": 1.0,
                        "noise": "seeded"}}
    result = _run(spec, tmp_path / "run")
    card = _export(str(tmp_path / "run"), "safetensors", tmp_path / "out")
    p = card["privacy"]
    assert p["epsilon"] == pytest.approx(result.ledger[-1]["epsilon"])
    assert (p["delta"], p["mechanism"], p["accountant"]) == (1e-5, "gaussian", "pld")
    assert p["guarantee"] == "reproducible, not private"
    assert card["participants"]["distinct_accepted"].startswith("withheld")
    assert set(card["metrics"]) <= {"test_accuracy", "test_loss", "epsilon"}


def test_unknown_versions_and_jobs_are_refused(run, tmp_path, capsys):
    out, _ = run
    assert main(["export", str(out), "--format", "onnx", "--out", str(tmp_path),
                 "--version", "9"]) == 2
    assert "no model version 9" in capsys.readouterr().err
    assert main(["export", "nope", "--database", f"sqlite:///{out / 'tsfl.db'}",
                 "--format", "onnx", "--out", str(tmp_path)]) == 2
    assert "no job 'nope'" in capsys.readouterr().err


def test_a_deployment_announces_each_version_and_exports_from_its_database(tmp_path):
    spec = {**SPEC, "name": "export-grpc", "rounds": 2,
            "clients": {"count": 4, "per_round": 4}}
    fed = build_federation(parse_job(spec))
    db = tmp_path / "coord.db"

    async def scenario():
        async with coordinator_grpc(db) as stack:
            coordinator = stack.jobs.coordinator
            coordinator.evaluate_releases = True  # as the coordinator service
            registry = coordinator.bus.consumer([topics.REGISTRY], "truststram-lifecycle")
            await registry.start()
            job = (await stack.jobs.submit(yaml.safe_dump(spec), "enrol")).job_id
            await asyncio.wait_for(asyncio.gather(*(
                run_client(stack.address, fed.clients[cid], job_id=job, device_id=cid,
                           token="enrol", layout=fed.workspace.layout, offload=False)
                for cid in fed.client_ids)), 120)
            events = []
            while len(events) < 2:
                record = await registry.getone(timeout=10)
                assert record is not None, "no announcement"
                events.append(parse_registry_event(record.value))
            await registry.stop()
            return job, events, await stack.store.latest_checkpoint(job)

    job, events, final = asyncio.run(scenario())
    assert [(e["job"], e["version"]) for e in events] == [(job, 1), (job, 2)]
    last = events[-1]
    assert last["sha256"] == vector_sha256(final["vector"])
    assert 0 < last["metrics"]["test_accuracy"] <= 1  # the coordinator's evaluation
    assert last["provenance"]["spec_sha256"] == parse_job(spec).sha256()
    assert last["artefact"]["export"].startswith(f"tsfl export {job} --version 2")
    assert not {"accepted", "train_loss", "cohort"} & set(json.dumps(last).split('"'))
    card = _export(job, "onnx", tmp_path / "out", "--database", f"sqlite:///{db}")
    assert card["model"]["sha256"] == last["sha256"] and card["version"] == 2
    onnx.checker.check_model(onnx.load(str(tmp_path / "out/model.onnx")), full_check=True)


def test_registry_events_decode_into_faust_records(run):
    pytest.importorskip("faust", reason="installed with the [faust] extra")
    from tsfl.faust_models import ModelVersion, TsflCodec
    from tsfl.pipeline.registry import registry_event

    _, result = run
    spec = result.spec
    layout = FlatModule(build_model(spec.model, (1, 8, 8), 10, spec.seed)).layout
    data = registry_event("job-1", spec, layout, 3, 3, result.final_vector,
                          {"test_accuracy": 0.9, "train_loss": 0.1}, None)
    record = ModelVersion.from_data(TsflCodec().loads(data))
    assert (record.job, record.version, record.sha256) == (
        "job-1", 3, vector_sha256(result.final_vector))
    assert record.metrics == {"test_accuracy": 0.9}  # training losses are not released
    assert record.provenance["robust_rule"] == "none" and record.epsilon is None
