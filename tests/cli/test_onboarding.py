"""A device developer learns the job's model from the coordinator, and a device whose
model differs is refused cleanly, naming the tensors, before it trains anything."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import yaml
from grpc_stack import coordinator_grpc
from torch import nn

from tsfl.core.layout import ParamLayout
from tsfl.sdk import TorchClient
from tsfl.sdk.grpc_client import LayoutMismatch, start_client
from tsfl.training.flat import FlatModule

SPEC = yaml.safe_dump({"name": "onboard", "rounds": 1, "clients": {"count": 2, "per_round": 2},
                       "model": {"kind": "mlp", "hidden": [16]}})


def test_layout_differences_name_the_tensors():
    job = ParamLayout([("fc1.weight", (16, 64), "float32"), ("fc1.bias", (16,), "float32")])
    mine = ParamLayout([("fc1.weight", (8, 64), "float32"), ("head.bias", (16,), "float32")])
    diffs = job.differences(mine, here="the job", there="this model")
    assert diffs == ["fc1.bias: in the job, missing from this model",
                     "fc1.weight: shape (16, 64) in the job, (8, 64) in this model",
                     "head.bias: in this model, not in the job"]
    assert job.differences(job) == []


def test_a_device_with_another_model_is_refused_before_training(tmp_path):
    async def scenario():
        async with coordinator_grpc(tmp_path / "onboard.db") as stack:
            job = (await stack.jobs.submit(SPEC, "enrol")).job_id
            wrong = FlatModule(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
            client = TorchClient(wrong, np.zeros((4, 64), np.float32), np.zeros(4, np.int64))
            with pytest.raises(LayoutMismatch) as info:
                await asyncio.wait_for(start_client(
                    stack.address, client, job_id=job, device_id="d1", token="enrol",
                    layout=wrong.layout), 30)
            uploads = await stack.store.list_participants(job)
            return str(info.value), uploads

    message, uploads = asyncio.run(scenario())
    assert "does not match job" in message
    assert "3.weight: in the job, missing from this device's model" in message
    assert "1.bias: shape (16,) in the job, (10,) in this device's model" in message
    assert not [p for p in uploads if p["status"] == "accepted"]


@pytest.mark.parametrize("kind,shape,classes", [
    ({"kind": "mlp", "hidden": [32, 16]}, (64,), 10), ({"kind": "logreg"}, (30,), 2),
    ({"kind": "cnn"}, (1, 8, 8), 10)])
def test_a_device_builds_a_builtin_kind_from_the_layout_alone(kind, shape, classes):
    from tsfl.config import ModelSpec
    from tsfl.sdk.job_model import job_model
    from tsfl.sim.models import build_model

    layout = FlatModule(build_model(ModelSpec(**kind), shape, classes, 0)).layout
    assert FlatModule(job_model(layout)).layout == layout


def test_a_custom_layout_is_refused_with_what_to_do():
    from tsfl.sdk.job_model import UnknownModel, job_model

    odd = ParamLayout([("encoder.weight", (8, 4), "float32"), ("encoder.bias", (8,), "float32")])
    with pytest.raises(UnknownModel, match=r"model\.builder"):
        job_model(odd)


def test_a_device_joins_knowing_only_the_job_id(tmp_path):
    """GetJob's promise kept on the device API: the layout from registration is enough to
    build the model, train, and end with the job's final model."""
    from tsfl.sdk.grpc_client import fetch_job_layout, run_client
    from tsfl.sdk.job_model import job_model

    async def scenario():
        async with coordinator_grpc(tmp_path / "layout.db") as stack:
            one = yaml.safe_dump({**yaml.safe_load(SPEC), "clients": {"count": 1,
                                                                      "per_round": 1}})
            job = (await stack.jobs.submit(one, "enrol")).job_id
            layout = await fetch_job_layout(stack.address, job, "d1", "enrol")
            flat = FlatModule(job_model(layout))
            rng = np.random.default_rng(0)
            client = TorchClient(flat, rng.normal(size=(32, 64)).astype(np.float32),
                                 rng.integers(0, 10, 32))
            return await asyncio.wait_for(run_client(
                stack.address, client, job_id=job, device_id="d1", token="enrol",
                layout=layout), 60)

    result = asyncio.run(scenario())
    assert result.contributed == 1 and result.final_version == 1
    assert result.final_model is not None and result.final_model.size == 64 * 16 + 16 + 170
