"""Warm start (`model.init`): a job starts from a safetensors file or a torch state dict,
checked against its layout (each problem names the tensor), bounded in size, read with
torch's weights-only unpickler; a coordinator reads it from its data directory only."""

from __future__ import annotations

import asyncio
import os
import pickle

import numpy as np
import pytest
import torch

pytest.importorskip("safetensors", reason="installed with the [interop] extra")

from tsfl.config import ConfigError, parse_job
from tsfl.interop.checkpoints import (
    CheckpointError,
    max_checkpoint_bytes,
    read_checkpoint,
    write_safetensors,
)
from tsfl.runtime.admission import AdmissionPolicy, admit
from tsfl.runtime.embedded import run_embedded
from tsfl.runtime.simulation import initial_model
from tsfl.sim.models import build_model
from tsfl.storage import Store

SPEC = {"name": "warm", "seed": 4, "rounds": 3, "clients": {"count": 8, "per_round": 4},
        "model": {"kind": "mlp", "hidden": [32]}, "data": {"partition": {"kind": "iid"}},
        "training": {"lr": 0.1, "epochs": 1, "batch_size": 16}}


def _run(spec, out):
    return asyncio.run(run_embedded(parse_job(spec), out))


async def _checkpoint(db, job_id, version):
    store = await Store.open(f"sqlite:///{db}", migrate_schema=False)
    try:
        return (await store.latest_checkpoint(job_id, version))["vector"]
    finally:
        await store.close()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A model trained by one job, saved both ways."""
    out = tmp_path_factory.mktemp("pre")
    result = _run({**SPEC, "rounds": 6}, out / "run")
    layout, _ = initial_model(parse_job(SPEC))
    write_safetensors(out / "pre.safetensors", layout, result.final_vector)
    net = build_model(parse_job(SPEC).model, (1, 8, 8), 10, 0)
    net.load_state_dict({k: torch.from_numpy(v)
                         for k, v in layout.unflatten(result.final_vector).items()})
    torch.save(net.state_dict(), out / "pre.pt")
    return out, result, layout


@pytest.mark.parametrize("name", ["pre.safetensors", "pre.pt"])
def test_a_job_starts_from_a_pretrained_model(pretrained, tmp_path, name):
    out, pre, _ = pretrained
    spec = {**SPEC, "name": "warm-ft", "rounds": 1,
            "model": {**SPEC["model"], "init": str(out / name)}}
    result = _run(spec, tmp_path)
    assert result.status == "COMPLETED"
    v0 = asyncio.run(_checkpoint(tmp_path / "tsfl.db", result.job_id, 0))
    np.testing.assert_array_equal(v0, pre.final_vector)  # version 0 is the checkpoint
    # fine-tuning starts where the pretrained model was, not from scratch
    cold = _run({**SPEC, "name": "cold", "rounds": 1}, tmp_path / "cold")
    assert result.metrics[0]["test_accuracy"] > cold.metrics[0]["test_accuracy"] + 0.1
    assert result.metrics[0]["test_accuracy"] >= pre.metrics[-1]["test_accuracy"] - 0.05


def test_a_cold_start_keeps_the_jobs_identity():
    assert "init" not in parse_job(SPEC).model_dump()["model"]
    warm = parse_job({**SPEC, "model": {**SPEC["model"], "init": "w.safetensors"}})
    assert warm.sha256() != parse_job(SPEC).sha256()


def _tensors(layout, vector):
    return {k: torch.from_numpy(v) for k, v in layout.unflatten(vector).items()}


def test_checkpoints_that_do_not_fit_the_layout_are_refused_naming_the_tensor(pretrained,
                                                                               tmp_path):
    _, pre, layout = pretrained
    good = _tensors(layout, pre.final_vector)
    cases = {
        "shape": ({**good, "1.weight": torch.zeros(16, 64)},
                  r"tensor '1.weight' has shape \(16, 64\) in the checkpoint, the model's "
                  r"is \(32, 64\)"),
        "missing": ({k: v for k, v in good.items() if k != "3.bias"},
                    "tensor '3.bias' is missing"),
        "extra": ({**good, "head.weight": torch.zeros(2)}, "'head.weight' in the checkpoint "
                                                           "is not in the model"),
        "nan": ({**good, "3.bias": torch.full((10,), float("nan"))}, "non-finite"),
        "prefix": ({f"module.{k}": v for k, v in good.items()}, "'module.' prefix"),
    }
    for name, (tensors, match) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(tensors, path)
        with pytest.raises(CheckpointError, match=match):
            read_checkpoint(path, layout)
    # integers are not a model's weights
    from safetensors.torch import save_file

    save_file({**good, "1.bias": torch.zeros(32, dtype=torch.int64)}, tmp_path / "i.st")
    with pytest.raises(CheckpointError, match=r"tensor '1.bias' is not F16/BF16/F32/F64"):
        read_checkpoint(tmp_path / "i.st", layout)
    # and through the job spec, the error names the field
    spec = {**SPEC, "model": {**SPEC["model"], "init": str(tmp_path / "shape.pt")}}
    with pytest.raises(ConfigError, match=r"model.init: tensor '1.weight'"):
        _run(spec, tmp_path / "bad")


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_files_that_are_not_checkpoints_are_refused_before_anything_runs(pretrained,
                                                                         tmp_path):
    _, _, layout = pretrained
    (tmp_path / "text").write_text("not a model")
    with pytest.raises(CheckpointError, match="neither a safetensors file nor a torch"):
        read_checkpoint(tmp_path / "text", layout)
    torch.save({"1.weight": Payload()}, tmp_path / "evil.pt", pickle_module=pickle)
    with pytest.raises(CheckpointError, match="not a loadable torch state dict"):
        read_checkpoint(tmp_path / "evil.pt", layout)
    big = tmp_path / "big.safetensors"
    with big.open("wb") as f:  # sparse: larger than 8 bytes a parameter + headers
        f.truncate(max_checkpoint_bytes(layout) + 1)
    with pytest.raises(CheckpointError, match="more than a checkpoint of this model"):
        read_checkpoint(big, layout)
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint(tmp_path / "absent.pt", layout)


def test_a_coordinator_reads_checkpoints_from_its_data_directory_only(pretrained, tmp_path):
    out, pre, _ = pretrained
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").mkdir()
    (data / "models" / "pre.safetensors").write_bytes((out / "pre.safetensors").read_bytes())
    policy = AdmissionPolicy(data_dir=data)
    spec = parse_job({**SPEC, "model": {**SPEC["model"], "init": "models/pre.safetensors"}})
    admitted, _, initial = admit(spec, policy)
    np.testing.assert_array_equal(initial, pre.final_vector)
    assert admitted.model.init == str((data / "models" / "pre.safetensors").resolve())
    os.symlink(out / "pre.safetensors", data / "link.safetensors")
    for path, match in [(str(out / "pre.safetensors"), "outside"),
                        ("../../pre.safetensors", "outside"),
                        ("link.safetensors", "outside"),
                        ("models/none.safetensors", "no such file")]:
        bad = parse_job({**SPEC, "model": {**SPEC["model"], "init": path}})
        with pytest.raises(ConfigError, match=f"model.init: .*{match}"):
            admit(bad, policy)
    with pytest.raises(ConfigError, match=r"model\.init: this coordinator reads no data"):
        admit(spec, AdmissionPolicy())


def test_small_files_that_expand_are_refused_before_they_do(pretrained, tmp_path):
    """A submitter's bombs (found in review): a 1.5 KB tensor of 2^33 elements viewing
    one stored value, a view of a larger storage, a compressed torch zip, and float64
    values that overflow float32."""
    import resource
    import zipfile

    _, pre, layout = pretrained
    good = _tensors(layout, pre.final_vector)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save({"1.weight": torch.zeros(1, dtype=torch.float16).as_strided((1 << 33,), (0,))},
               tmp_path / "bomb.pt")
    with pytest.raises(CheckpointError, match=r"has shape \(8589934592,\)"):
        read_checkpoint(tmp_path / "bomb.pt", layout)
    torch.save({**good, "1.weight": torch.zeros(1, dtype=torch.float32).as_strided(
        (32, 64), (0, 0))}, tmp_path / "view.pt")
    with pytest.raises(CheckpointError, match="a view of other storage"):
        read_checkpoint(tmp_path / "view.pt", layout)
    torch.save(good, tmp_path / "pre.pt")
    with zipfile.ZipFile(tmp_path / "pre.pt") as src, zipfile.ZipFile(
            tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(CheckpointError, match="compressed entries"):
        read_checkpoint(tmp_path / "deflated.pt", layout)
    from safetensors.torch import save_file

    save_file({k: torch.full(v.shape, 1e300, dtype=torch.float64) for k, v in good.items()},
              tmp_path / "f64.st")
    with pytest.raises(CheckpointError, match="non-finite"):
        read_checkpoint(tmp_path / "f64.st", layout)
    # nothing was materialised on the way (ru_maxrss is in KiB)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200 * 1024
