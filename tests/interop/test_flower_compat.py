"""Flower clients, unchanged, as tsfl devices (tsfl.compat.flower): a quickstart-style
client (tests/flower_quickstart.py) in the embedded run and against a gRPC coordinator;
config passed through; local DP and compression around it; DP-SGD and clients whose
model is not the job's refused with the reason; what a client returns is checked."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import yaml

pytest.importorskip("flwr", reason="installed with the [bench] extra")

import flower_quickstart
from flwr.client import NumPyClient as FlwrNumPyClient
from grpc_stack import coordinator_grpc

from tsfl.compat.flower import (
    FlowerClient,
    flower_config,
    flower_federation,
    run_flower,
    start_flower_client,
)
from tsfl.config import ConfigError, parse_job
from tsfl.core.layout import ParamLayout
from tsfl.sdk.privacy_guard import TaskRefused

SPEC = {"name": "flower", "seed": 0, "rounds": 6, "clients": {"count": 8, "per_round": 4},
        "model": {"kind": "mlp", "hidden": [32]}, "data": {"partition": {"kind": "iid"}},
        "training": {"lr": 0.1, "epochs": 1, "batch_size": 16}}
RUN_CONFIG = {"local-epochs": 1}


def test_a_quickstart_client_trains_a_job_embedded_unchanged(tmp_path):
    result = run_flower(SPEC, flower_quickstart.client_fn, tmp_path,
                        run_config=RUN_CONFIG)
    assert result.status == "COMPLETED", result.reason
    acc = [m["test_accuracy"] for m in result.metrics]
    assert acc[-1] > 0.6 and acc[-1] > acc[0]  # digits, 6 rounds of 4 quickstart clients
    assert all(m["clients"] == 4 for m in result.metrics)
    assert result.metrics[-1]["train_loss"] > 0  # the client's own metrics, passed on
    assert (tmp_path / "tsfl.db").is_file() and (tmp_path / "summary.json").is_file()


def test_local_dp_and_compression_apply_around_a_flower_client(tmp_path):
    extra = {"rounds": 3,
             "privacy": {"mode": "local", "clip_norm": 1.0, "noise_multiplier": 0.5,
                         "noise": "seeded"},
             "compression": {"uplink": {"chain": ["topk", "q8"], "ratio": 0.1}}}
    result = run_flower({**SPEC, **extra}, flower_quickstart.client_fn, tmp_path,
                        run_config=RUN_CONFIG)
    assert result.status == "COMPLETED", result.reason
    m = result.metrics[-1]
    assert m["clients"] == 4 and m["epsilon"] > 0  # each upload charged to the device
    assert m["train_loss"] is None  # under local DP an update travels alone
    # top-k 10% + 8-bit: far fewer bytes than the float32 deltas (4 × 2,410 × 4 bytes)
    assert m["bytes_up"] < 4 * 2410 * 4 / 3


def test_dp_sgd_and_attacks_are_refused_with_the_reason():
    dp_sgd = {**SPEC, "training": {**SPEC["training"],
                                   "dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0,
                                              "noise": "seeded"}}}
    with pytest.raises(ConfigError, match=r"training\.dp_sgd: record-level DP-SGD"):
        flower_federation(parse_job(dp_sgd), flower_quickstart.client_fn, RUN_CONFIG)
    attacked = {**SPEC, "attacks": {"kind": "sign_flip", "fraction": 0.25}}
    with pytest.raises(ConfigError, match="attacks"):
        flower_federation(parse_job(attacked), flower_quickstart.client_fn, RUN_CONFIG)


def test_a_client_whose_model_is_not_the_jobs_is_refused_naming_the_tensor():
    wrong = parse_job({**SPEC, "model": {"kind": "mlp", "hidden": [16]}})
    with pytest.raises(ValueError, match=r"array 0 has shape \(32, 64\).*'1.weight' is "
                                         r"\(16, 64\)"):
        flower_federation(wrong, flower_quickstart.client_fn, RUN_CONFIG)


class Recording(FlwrNumPyClient):
    """A Flower client that records its configs and returns what it is told to."""

    def __init__(self, reply):
        self.reply, self.configs = reply, []

    def get_parameters(self, config):
        return [np.zeros(3, np.float32)]

    def fit(self, parameters, config):
        self.configs.append(config)
        return self.reply(parameters)


def test_config_is_passed_through_and_fit_results_are_checked():
    layout = ParamLayout([("w", (3,), "float32")])
    task = {"seed": 7, "round": 2, "lr": 0.05, "epochs": 2, "proximal_mu": 0.01,
            "compression": {"chain": ["f32"]}, "local_dp": {"clip_norm": 1.0}}
    assert flower_config(task) == {"seed": 7, "round": 2, "server_round": 2, "lr": 0.05,
                                   "epochs": 2, "proximal_mu": 0.01}
    ok = Recording(lambda p: ([p[0] + 1], 5, {"loss": 0.5, "tag": "x", "flag": True}))
    params, n, metrics = FlowerClient(ok.to_client(), layout).fit([np.zeros(3)], task)
    assert ok.configs[0]["server_round"] == 2 and "local_dp" not in ok.configs[0]
    np.testing.assert_array_equal(params[0], np.ones(3, np.float32))
    assert n == 5 and metrics == {"loss": 0.5}  # numbers only
    for reply, match in [
        (lambda p: ([np.full(3, np.nan)], 5, {}), "non-finite"),
        (lambda p: ([np.zeros(4)], 5, {}), r"shape \(4,\)"),
        (lambda p: ([np.zeros(3), np.zeros(1)], 5, {}), "2 arrays"),
        (lambda p: ([np.zeros(3)], 0, {}), "examples"),
        (lambda p: [np.zeros(3)], "must return"),
    ]:
        with pytest.raises(TaskRefused, match=match):
            FlowerClient(Recording(reply), layout).fit([np.zeros(3)], task)


def test_quickstart_clients_train_a_job_on_a_grpc_coordinator(tmp_path):
    spec = {**SPEC, "rounds": 3, "clients": {"count": 4, "per_round": 4}}

    async def scenario():
        async with coordinator_grpc(tmp_path / "flower.db") as stack:
            stack.jobs.coordinator.evaluate_releases = True  # as the coordinator service
            job = (await stack.jobs.submit(yaml.safe_dump(spec), "enrol")).job_id
            clients = [flower_quickstart.client_fn(ctx) for ctx in (
                _context(i, 4) for i in range(4))]
            results = await asyncio.wait_for(asyncio.gather(*(
                start_flower_client(stack.address, client, job_id=job,
                                    device_id=f"flower-{i}", token="enrol", offload=False)
                for i, client in enumerate(clients))), 120)
            for _ in range(100):  # metrics are written beside the rounds
                rounds = await stack.store.list_rounds(job)
                if len(rounds) == 3 and all("test_accuracy" in (r["metrics"] or {})
                                            for r in rounds):
                    break
                await asyncio.sleep(0.1)
            return results, rounds, await stack.store.get_job(job)

    results, rounds, job = asyncio.run(scenario())
    assert job["status"] == "COMPLETED", job["reason"]
    assert all(r.contributed == 3 for r in results)
    assert [r["state"] for r in rounds] == ["PUBLISHED"] * 3
    assert rounds[-1]["metrics"]["test_accuracy"] > 0.6


def _context(i: int, n: int):
    from tsfl.compat.flower import flower_context

    return flower_context(i, n, RUN_CONFIG)
