"""Record-level DP-SGD in the client: per-record gradients, clipping, noise, accounting."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from torch import nn

from tsfl.config import ConfigError, parse_job
from tsfl.privacy.noise import SeededNoise
from tsfl.runtime.embedded import run_embedded
from tsfl.runtime.report import summarize
from tsfl.sdk.client import TorchClient
from tsfl.sdk.dp_sgd import (
    DpSgdError,
    DpSgdSettings,
    RecordAccountant,
    check_model,
    clipped_sum,
    dp_sgd_epochs,
    per_sample_gradients,
)
from tsfl.training.loop import TrainSettings


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _data(n: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _loop_gradients(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    rows = []
    for i in range(len(y)):
        module.zero_grad()
        F.cross_entropy(module(x[i:i + 1]), y[i:i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in module.parameters()]))
    return torch.stack(rows)


def test_per_record_gradients_equal_one_backward_pass_per_record():
    module, (x, y) = _mlp(), _data()
    fast = per_sample_gradients(module, x, y)
    assert fast.shape == (12, sum(p.numel() for p in module.parameters()))
    torch.testing.assert_close(fast, _loop_gradients(module, x, y), rtol=1e-5, atol=1e-6)


def test_clipping_bounds_each_record_and_keeps_small_ones():
    g = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    total, within = clipped_sum(g, 1.0)
    torch.testing.assert_close(total, torch.tensor([0.6 + 0.3, 0.8 + 0.4]))
    assert within == 2
    big = torch.randn(50, 20) * 10
    total, _ = clipped_sum(big, 0.5)
    assert float(total.norm()) <= 50 * 0.5 + 1e-4


def test_one_dp_sgd_step_is_abadi_algorithm_1():
    """Same records, same noise draw: the step equals the algorithm written out by hand."""
    module, (x, y) = _mlp(), _data(n=8)
    reference = _mlp()
    settings = TrainSettings(lr=0.5, epochs=1, batch_size=8)  # q = 1: one step, all records
    dp = DpSgdSettings(noise_multiplier=1.3, max_grad_norm=0.2)
    flat = [p for p in module.parameters()]
    dp_sgd_epochs(module, flat, x, y, settings, dp, SeededNoise(7))

    g = _loop_gradients(reference, x, y)
    factors = (0.2 / g.norm(dim=1)).clamp(max=1.0)
    dim = g.shape[1]
    source = SeededNoise(7)  # the device's one source: the batch draw first, then the noise
    assert (source.uniform(8) < 1.0).all()
    noise = torch.from_numpy(source.normal(dim).astype(np.float32)) * 1.3 * 0.2
    step = ((g * factors[:, None]).sum(0) + noise) / 8
    with torch.no_grad():
        expected = torch.cat([p.reshape(-1) for p in reference.parameters()]) - 0.5 * step
    got = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_record_epsilon_is_dp_accountings_for_the_steps_taken():
    dp = DpSgdSettings(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5)
    acc = RecordAccountant(dp)
    for _ in range(3):  # three rounds of 40 steps at q = 0.05
        acc.charge(0.05, 40)
    event = dp_event.PoissonSampledDpEvent(0.05, dp_event.GaussianDpEvent(1.1))
    reference = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)\
        .compose(event, 120).get_epsilon(1e-5)
    assert acc.steps == 120
    assert acc.epsilon == pytest.approx(reference, rel=1e-6)


def test_models_that_mix_records_and_bad_settings_are_refused():
    with pytest.raises(DpSgdError, match="BatchNorm1d"):
        check_model(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    with pytest.raises(DpSgdError, match="noise_multiplier"):
        DpSgdSettings(noise_multiplier=0.0, max_grad_norm=1.0)
    with pytest.raises(DpSgdError, match="delta"):
        DpSgdSettings(noise_multiplier=1.0, max_grad_norm=1.0, delta=1.0)
    with pytest.raises(DpSgdError, match="GroupNorm"):
        TorchClient(nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4)), *_data(),
                    dp_sgd=DpSgdSettings(1.0, 1.0))
    with pytest.raises(ConfigError, match="max_grad_norm"):
        parse_job({"name": "x", "training": {"dp_sgd": {"noise_multiplier": 1.0}}})


def test_client_keeps_a_growing_record_epsilon_and_uploads_none_of_it():
    x, y = _data(n=40)
    client = TorchClient(_mlp(), x, y, TrainSettings(lr=0.1, batch_size=8, epochs=1),
                         DpSgdSettings(noise_multiplier=1.0, max_grad_norm=1.0))
    start = client.flat.vector.copy()
    eps = []
    for seed in range(3):
        _, n, metrics = client.fit_vector(start, {"seed": seed})
        assert n == 40 and metrics == {}  # no loss, no ε, no clip fraction leaves the device
        assert math.isfinite(client.last_dp_sgd["train_loss"])
        eps.append(client.record_epsilon)
    assert 0 < eps[0] < eps[1] < eps[2]
    assert client.record_accountant is not None and client.record_accountant.steps == 15


def test_job_with_dp_sgd_reports_record_level_privacy(tmp_path):
    spec = parse_job({"name": "dpsgd", "seed": 1, "rounds": 3,
                      "data": {"dataset": "digits"},
                      "clients": {"count": 10, "per_round": 5}, "model": {"kind": "logreg"},
                      "training": {"lr": 0.1, "epochs": 1, "batch_size": 32,
                                   "dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}})
    result = asyncio.run(run_embedded(spec, tmp_path / "run"))
    assert result.status == "COMPLETED"
    spent = [m["record_epsilon"] for m in result.metrics]
    assert all(e is not None and e > 0 for e in spent)
    summary = summarize(result.spec, result.metrics, wall_s=result.wall_s,
                        job_id=result.job_id, status=result.status, reason=result.reason,
                        ledger=result.ledger)
    record = summary["privacy"]["record_level"]
    assert record["epsilon_max"] == pytest.approx(max(spent))
    assert record["noise_multiplier"] == 1.0 and record["max_grad_norm"] == 1.0
