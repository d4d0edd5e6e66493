"""Server optimizers: hand-computed steps and Flower's implementations on the same inputs."""

import warnings

import numpy as np
import pytest

from tsfl.core.accumulator import WeightedAccumulator
from tsfl.strategies import (
    STRATEGIES,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    build_strategy,
)

P = 40


def _rounds(seed=0, n_rounds=4, n_clients=5):
    """Client models per round (as Flower sees them) with example counts."""
    rng = np.random.default_rng(seed)
    return [[(rng.normal(size=P).astype(np.float32), int(rng.integers(5, 50)))
             for _ in range(n_clients)] for _ in range(n_rounds)]


def _run_ours(strategy, x0, rounds):
    x = x0.copy()
    history = []
    for clients in rounds:
        acc = WeightedAccumulator(P)
        for model, n in clients:
            acc.add(model - x, n)  # clients upload deltas against the current model
        x = strategy.aggregate_fit(x, acc.mean()).copy()
        history.append(x.copy())
    return history


def test_fedavg_step_by_hand():
    x = np.array([1.0, 2.0], np.float32)
    delta = np.array([0.5, -1.0], np.float32)
    np.testing.assert_allclose(FedAvg().aggregate_fit(x, delta.copy()), [1.5, 1.0])
    np.testing.assert_allclose(FedAvg(server_lr=0.5).aggregate_fit(x, delta.copy()), [1.25, 1.5])


def test_fedavgm_by_hand():
    s = FedAvgM(server_lr=1.0, momentum=0.5)
    x = np.zeros(2, np.float32)
    x1 = s.aggregate_fit(x, np.array([1.0, 2.0], np.float32)).copy()
    np.testing.assert_allclose(x1, [1.0, 2.0])  # v1 = Δ1
    x2 = s.aggregate_fit(x1, np.array([1.0, 0.0], np.float32)).copy()
    np.testing.assert_allclose(x2, [1.0 + 1.5, 2.0 + 1.0])  # v2 = 0.5 v1 + Δ2


def test_fedadam_by_hand_paper_form():
    s = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    x = np.zeros(1, np.float32)
    d = np.array([0.2], np.float32)
    out = s.aggregate_fit(x, d.copy())
    m = 0.1 * 0.2
    v = 0.01 * 0.04
    assert out[0] == pytest.approx(0.1 * m / (np.sqrt(v) + 1e-3), rel=1e-5)


def test_fedyogi_and_fedadagrad_by_hand():
    d = np.array([0.2, -0.4], np.float32)
    yogi = FedYogi(server_lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3)
    out = yogi.aggregate_fit(np.zeros(2, np.float32), d.copy())
    m = 0.1 * d
    v = 0.0 - 0.01 * d**2 * np.sign(0.0 - d**2)  # = 0.01 d²
    np.testing.assert_allclose(out, 0.01 * m / (np.sqrt(v) + 1e-3), rtol=1e-5)
    ada = FedAdagrad(server_lr=0.1, tau=1e-9)
    out = ada.aggregate_fit(np.zeros(2, np.float32), d.copy())
    np.testing.assert_allclose(out, 0.1 * d / (np.abs(d) + 1e-9), rtol=1e-5)


def test_fedprox_sends_mu_and_averages_like_fedavg():
    s = FedProx(mu=0.1)
    assert s.client_config(3) == {"proximal_mu": 0.1}
    x = np.ones(3, np.float32)
    np.testing.assert_allclose(s.aggregate_fit(x, np.full(3, 2.0, np.float32)), 3.0)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_state_round_trip_resumes_identically(name):
    rounds = _rounds(seed=7)
    x0 = np.zeros(P, np.float32)
    full = _run_ours(build_strategy(name), x0, rounds)
    first = build_strategy(name)
    mid = _run_ours(first, x0, rounds[:2])[-1]
    resumed = build_strategy(name)
    resumed.load_state(first.state())
    rest = _run_ours(resumed, mid, rounds[2:])
    np.testing.assert_allclose(rest[-1], full[-1], rtol=1e-6)


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown strategy"):
        build_strategy("fedsgd")


# -- against Flower -------------------------------------------------------------------------
flwr = pytest.importorskip("flwr", reason="Flower is installed with the [bench] extra")


def _flower_run(strategy, rounds, round_offset=0):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    history = []
    for t, clients in enumerate(rounds, start=1):
        results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([m]), n, {}))
                   for m, n in clients]
        params, _ = strategy.aggregate_fit(t + round_offset, results, [])
        history.append(parameters_to_ndarrays(params)[0])
    return history


@pytest.fixture
def x0():
    return np.random.default_rng(99).normal(size=P).astype(np.float32)


def _flower(cls_name, x0, **kw):
    from flwr.common import ndarrays_to_parameters
    from flwr.server import strategy as fs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(fs, cls_name)(initial_parameters=ndarrays_to_parameters([x0.copy()]), **kw)


def test_fedavg_equals_flower_aggregate(x0):
    from flwr.server.strategy.aggregate import aggregate

    rounds = _rounds(seed=1, n_rounds=1, n_clients=8)
    ours = _run_ours(FedAvg(), x0, rounds)[0]
    theirs = aggregate([([m], n) for m, n in rounds[0]])[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_fedavgm_equals_flower(x0):
    rounds = _rounds(seed=2)
    ours = _run_ours(FedAvgM(server_lr=0.7, momentum=0.9), x0, rounds)
    theirs = _flower_run(_flower("FedAvgM", x0, server_learning_rate=0.7, server_momentum=0.9),
                         rounds)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_fedadam_equals_flower(x0):
    rounds = _rounds(seed=3)
    ours = _run_ours(FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3,
                             bias_correction=True), x0, rounds)
    # Flower's bias correction uses exponent server_round + 1: feeding it server_round
    # t − 1 makes its step t the textbook Adam step t that ours takes.
    theirs = _flower_run(_flower("FedAdam", x0, eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3),
                         rounds, round_offset=-1)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_fedyogi_equals_flower(x0):
    rounds = _rounds(seed=4)
    ours = _run_ours(FedYogi(server_lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3), x0, rounds)
    theirs = _flower_run(_flower("FedYogi", x0, eta=0.01, beta_1=0.9, beta_2=0.99, tau=1e-3),
                         rounds)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_fedadagrad_equals_flower(x0):
    rounds = _rounds(seed=5)
    ours = _run_ours(FedAdagrad(server_lr=0.1, tau=1e-3), x0, rounds)
    theirs = _flower_run(_flower("FedAdagrad", x0, eta=0.1, tau=1e-3), rounds)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
