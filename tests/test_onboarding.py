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
from tsfl.rpc.client import LayoutMismatch, start_client
from tsfl.sdk import TorchClient
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
