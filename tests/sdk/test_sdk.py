"""The SDK client API and runner, over the in-process transport."""

import numpy as np
import pytest
import torch
from torch import nn

from tsfl.core.layout import ParamLayout
from tsfl.sdk import NumPyClient, TorchClient
from tsfl.training.loop import TrainSettings


def _data(n=40, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def test_torch_client_fit_and_fit_vector_agree():
    torch.manual_seed(0)
    x, y = _data()
    client = TorchClient(nn.Linear(5, 2), x, y, TrainSettings(lr=0.1, epochs=2, batch_size=8))
    params = client.get_parameters({})
    start = client.layout.flatten_list(params)
    a, n, metrics = client.fit_vector(start.copy(), {"seed": 3})
    a = a.copy()
    b_list, n2, _ = client.fit(params, {"seed": 3})
    np.testing.assert_array_equal(a, client.layout.flatten_list(b_list))
    assert n == n2 == 40 and metrics["train_loss"] > 0
    assert not np.allclose(a, start)


def test_training_reduces_loss_and_evaluate_reports_accuracy():
    torch.manual_seed(0)
    x, y = _data(n=200)
    client = TorchClient(nn.Linear(5, 2), x, y, TrainSettings(lr=0.5, epochs=20, batch_size=32))
    params = client.get_parameters({})
    loss0, _, _ = client.evaluate(params, {})
    trained, _, _ = client.fit(params, {"seed": 0})
    loss1, n, m = client.evaluate(trained, {})
    assert loss1 < loss0 and m["accuracy"] > 0.9 and n == 200


def test_proximal_term_keeps_the_model_closer_to_the_global_one():
    torch.manual_seed(0)
    x, y = _data(n=100)
    client = TorchClient(nn.Linear(5, 2), x, y, TrainSettings(lr=0.5, epochs=10, batch_size=10))
    start = client.layout.flatten_list(client.get_parameters({}))
    free, _, _ = client.fit_vector(start.copy(), {"seed": 1})
    free_dist = np.linalg.norm(free - start)
    prox, _, _ = client.fit_vector(start.copy(), {"seed": 1, "proximal_mu": 1.0})
    assert np.linalg.norm(prox - start) < 0.7 * free_dist


class MeanClient(NumPyClient):
    """A hand-written NumPy client: moves parameters towards its data mean."""

    def __init__(self, target):
        self.target = target

    def fit(self, parameters, config):
        return [p + 0.5 * (self.target - p) for p in parameters], 10, {"train_loss": 1.0}


async def test_runner_drives_a_numpy_client_over_the_in_process_transport(tmp_path):
    """A plain NumPyClient takes part in a real round through coordinator + aggregator."""
    from tsfl.config import parse_job
    from tsfl.pipeline.roles import LocalPipeline
    from tsfl.runtime.transport import InProcessTransport
    from tsfl.sdk.runner import ClientRunner
    from tsfl.storage import Store

    layout = ParamLayout([("w", (4,), "float32")])
    store = await Store.open(f"sqlite:///{tmp_path / 'r.db'}")
    pipeline = await LocalPipeline.in_memory(store)
    coord = pipeline.coordinator
    spec = parse_job({"name": "np", "clients": {"count": 2, "per_round": 2}})
    await coord.submit_job("np-1", spec, layout, np.zeros(4, np.float32))
    for c in ("c0", "c1"):
        await coord.register_device("np-1", c, "t")
    transport = InProcessTransport(coord)
    runners = [ClientRunner(f"c{i}", MeanClient(float(i + 1)), transport, layout)
               for i in range(2)]
    await coord.open_round("np-1")
    outcomes = [await r.run_once() for r in runners]
    assert all(o.receipt.accepted for o in outcomes)
    result = await coord.wait_round("np-1")
    assert result.ok and sorted(result.accepted) == ["c0", "c1"]
    # each client moved halfway to its target (1 and 2) with equal weight
    np.testing.assert_allclose(coord.model_vector("np-1"), 0.75)
    assert await runners[0].run_once() is None  # nothing to do until the next round
    await coord.finish_job("np-1", "COMPLETED")
    await pipeline.stop()
    await store.close()


@pytest.mark.parametrize("key,value", [("lr", float("nan")), ("lr", 0.0), ("epochs", 1e308),
                                       ("batch_size", -7), ("round", float("inf")),
                                       ("seed", "1"), ("epochs", True), ("lr", 1e9)])
def test_a_device_refuses_hostile_task_settings(key, value):
    """A coordinator is not trusted with a device's resources: an out-of-range setting is
    declined before anything is downloaded or trained."""
    from tsfl.sdk.privacy_guard import TaskRefused
    from tsfl.sdk.task_settings import check_task_settings

    check_task_settings({"lr": 0.1, "epochs": 2, "batch_size": 16, "round": 3, "seed": 7})
    with pytest.raises(TaskRefused, match=key):
        check_task_settings({key: value})
