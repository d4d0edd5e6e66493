"""Robust aggregators: hand-built cases, Flower's implementations on the same inputs,
WFAgg's filters one at a time, and its history across a restart."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.server.strategy import aggregate as flwr_agg

from tsfl.robust import geometry
from tsfl.robust.aggregators import (
    Bulyan,
    FLTrust,
    Krum,
    Median,
    MultiKrum,
    NormBounding,
    TrimmedMean,
)
from tsfl.robust.wfagg import ClientHistory, WFAgg


def _benign(n: int = 12, d: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    return (direction + 0.1 * rng.normal(size=(n, d))).astype(np.float32)


def _flower(x: np.ndarray, examples: np.ndarray | None = None) -> list:
    ex = examples if examples is not None else np.ones(len(x), dtype=int)
    return [([row.reshape(5, -1)], int(e)) for row, e in zip(x, ex, strict=True)]


def test_gram_distances_equal_the_double_loop():
    x = _benign(9, 33)
    d2 = geometry.pairwise_sq_distances(x)
    loop = np.array([[np.sum((a.astype(np.float64) - b) ** 2) for b in x] for a in x])
    np.testing.assert_allclose(d2, loop, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("f", [0, 2, 3])
def test_krum_equals_flowers(f):
    x = _benign(12, 40, seed=f)
    x[0] *= -5  # an outlier
    ours = Krum(f).aggregate(x)
    theirs = flwr_agg.aggregate_krum(_flower(x), num_malicious=f, to_keep=0)
    np.testing.assert_allclose(ours.vector, theirs[0].ravel(), rtol=1e-6)
    assert ours.weights[0] == 0 and ours.weights.sum() == 1


@pytest.mark.parametrize("f,keep", [(2, 5), (3, 9)])
def test_multikrum_equals_flowers_with_example_weights(f, keep):
    x = _benign(12, 40, seed=keep)
    x[[1, 4]] += 3.0
    examples = np.arange(1, 13)
    ours = MultiKrum(f, keep).aggregate(x, examples)
    theirs = flwr_agg.aggregate_krum(_flower(x, examples), num_malicious=f, to_keep=keep)
    np.testing.assert_allclose(ours.vector, theirs[0].ravel(), rtol=1e-5, atol=1e-6)
    assert ours.weights[1] == 0 and ours.weights[4] == 0 and ours.weights.sum() == keep


def test_median_and_trimmed_mean_equal_flowers():
    x = _benign(11, 40, seed=3)
    x[2] = 1e3
    np.testing.assert_allclose(Median().aggregate(x).vector,
                               flwr_agg.aggregate_median(_flower(x))[0].ravel(), rtol=1e-6)
    for beta in (0.1, 0.2, 0.3):
        np.testing.assert_allclose(
            TrimmedMean(beta).aggregate(x).vector,
            flwr_agg.aggregate_trimmed_avg(_flower(x), beta)[0].ravel(), rtol=1e-5)
    assert np.all(np.abs(Median().aggregate(x).vector) < 10)  # the outlier is gone


def test_bulyan_equals_flowers():
    x = _benign(15, 40, seed=5)
    x[[0, 7]] = -4.0
    ours = Bulyan(3).aggregate(x)
    theirs = flwr_agg.aggregate_bulyan(_flower(x), num_malicious=3,
                                       aggregation_rule=flwr_agg.aggregate_krum, to_keep=0)
    np.testing.assert_allclose(ours.vector, theirs[0].ravel(), rtol=1e-5, atol=1e-6)
    assert ours.weights[0] == 0 and ours.weights[7] == 0
    with pytest.raises(ValueError, match="4f"):
        Bulyan(4).aggregate(x)


def test_benign_rounds_stay_close_to_the_mean():
    x = _benign(20, 60, seed=9)
    mean = x.mean(axis=0)
    for agg in (MultiKrum(4), Median(), TrimmedMean(0.2), Bulyan(4), NormBounding(100.0),
                WFAgg(4)):
        out = agg.aggregate(x).vector
        assert np.linalg.norm(out - mean) < 0.1 * np.linalg.norm(mean), agg.name


def test_norm_bounding_scales_only_the_large_updates():
    x = np.array([[3.0, 4.0], [0.3, 0.4]], dtype=np.float32)
    out = NormBounding(1.0).aggregate(x)
    np.testing.assert_allclose(out.scale, [0.2, 1.0])
    np.testing.assert_allclose(out.vector, [(0.6 + 0.3) / 2, (0.8 + 0.4) / 2], rtol=1e-6)


def test_fltrust_refuses_opposed_updates_and_rescales_to_the_root_norm():
    root = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    x = np.array([[2.0, 0.0, 0.0], [-5.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=np.float32)
    out = FLTrust(root).aggregate(x)
    assert out.weights[1] == 0.0
    np.testing.assert_allclose(out.weights, [1.0, 0.0, np.sqrt(0.5)], rtol=1e-6)
    expected = (1.0 * np.array([1, 0, 0]) + np.sqrt(0.5) * np.array([1, 1, 0]) / np.sqrt(2)
                ) / (1 + np.sqrt(0.5))
    np.testing.assert_allclose(out.vector, expected, rtol=1e-5)


# -- WFAgg ---------------------------------------------------------------------------------
def test_wfagg_distance_filter_alone_drops_the_farthest():
    x = _benign(10, 30, seed=1)
    x[3] += 2.0  # same direction, far away: fails distance only
    out = WFAgg(1).aggregate(x)
    assert out.scores["distance"][3] == 0
    assert out.scores["distance"].sum() == 10 - 1 - 1


def test_wfagg_cosine_filter_alone_drops_the_turned_update():
    x = _benign(10, 30, seed=2)
    med = np.median(x, axis=0)
    turned = np.roll(med, 7)  # a norm like the others, another direction
    x[5] = turned * (np.linalg.norm(med) / np.linalg.norm(turned))
    out = WFAgg(1).aggregate(x)
    assert out.scores["cosine"][5] == 0


def test_wfagg_temporal_filter_alone_flags_a_sudden_change():
    rng = np.random.default_rng(0)
    agg = WFAgg(0, min_history=2)
    base = rng.normal(size=30)
    for _ in range(5):  # a steady client: small drifts
        out = agg.temporal(["c"], (base + 0.05 * rng.normal(size=30))[None, :])
    assert out[0][0] == 1.0
    passed, drift_d, _ = agg.temporal(["c"], (-3 * base)[None, :])
    assert passed[0] == 0.0 and drift_d[0] > 1.0


def test_wfagg_needs_two_filters_and_refuses_sign_flippers():
    x = _benign(10, 40, seed=4)
    x[[0, 1]] *= -1.0
    out = WFAgg(2).aggregate(x, clients=[f"c{i}" for i in range(10)])
    assert list(out.weights[:2]) == [0.0, 0.0]
    kept = out.weights > 0
    assert kept.sum() >= 10 - 2 - 1  # each filter keeps n − f − 1
    assert np.all(out.weights[kept] >= 0.6)
    assert "failed distance/cosine" in out.reasons[0]
    np.testing.assert_allclose(out.vector, x[kept].mean(axis=0), rtol=1e-4, atol=1e-6)


def test_wfagg_history_round_trips_and_sketches_large_models():
    hist = ClientHistory(sketch_size=64)
    agg = WFAgg(1, history=hist)
    rng = np.random.default_rng(1)
    base = rng.normal(size=5000).astype(np.float32)
    ids = [f"c{i}" for i in range(6)]
    for _ in range(3):
        agg.aggregate(base + 0.01 * rng.normal(size=(6, 5000)).astype(np.float32), clients=ids)
    restored = ClientHistory.from_bytes(hist.to_bytes())
    assert set(restored.clients) == set(ids)
    for cid in ids:
        a, b = hist.clients[cid], restored.clients[cid]
        np.testing.assert_array_equal(a.sketch, b.sketch)
        assert (a.drifts, a.mean_d, a.var_c) == (b.drifts, b.mean_d, b.var_c)
    assert hist.clients["c0"].sketch.shape == (64,)
    # a sketch preserves distances well enough to compare drifts
    y1, y2 = rng.normal(size=5000), rng.normal(size=5000)
    true = np.linalg.norm(y1 - y2)
    est = np.linalg.norm(hist.sketch(y1) - hist.sketch(y2))
    assert abs(est - true) / true < 0.4


# -- anomaly detection and the round's judgement -------------------------------------------
def test_sanity_checks_flag_opposed_and_oversized_updates():
    from tsfl.robust.anomaly import sanity_flags

    x = _benign(10, 30, seed=6)
    x[1] *= -1
    x[2] *= 10
    flags = sanity_flags(x, 0.0, 3.0)
    assert flags[1].startswith("opposed") and flags[2].startswith("oversized")
    assert all(f is None for i, f in enumerate(flags) if i not in (1, 2))
    assert sanity_flags(x, None, None) == [None] * 10


def test_judge_reduces_f_by_the_refused_and_keeps_honest_clients():
    """Scaled updates keep their direction: without the checks, WFAgg's cosine filter
    drops f + 1 honest clients in their place."""
    from tsfl.config import RobustSpec
    from tsfl.robust.anomaly import Reputation
    from tsfl.robust.judge import judge_round

    x = _benign(20, 40, seed=7)
    x[:4] *= 20.0
    ids = [f"c{i}" for i in range(20)]
    verdicts = judge_round(RobustSpec(aggregator="wfagg", num_malicious=4), ClientHistory(),
                           Reputation(), ids, x, np.ones(20))
    refused = {v["client"] for v in verdicts if v["weight"] == 0}
    assert {"c0", "c1", "c2", "c3"} <= refused
    assert len(refused - {"c0", "c1", "c2", "c3"}) <= 1  # f′ = 0: one honest at most


def test_reputation_refuses_a_repeat_offender_and_forgives_a_one_off():
    from tsfl.robust.anomaly import Reputation

    rep = Reputation(ema=0.4, threshold=0.3)
    for _ in range(3):
        rep.update("bad", False)
    rep.update("good", False)
    rep.update("good", True)
    assert rep.low(rep.current("bad")) and not rep.low(rep.current("good"))
    assert rep.norm_flag("c", 1.0) is None and rep.norm_flag("c", 10.0).startswith("norm jump")
    assert rep.loss_flag("c", 0.5) is None and rep.loss_flag("c", 0.6) is None
    assert rep.loss_flag("c", 5.0).startswith("training loss jump")
    assert rep.loss_flag("c", float("nan")) is None


def test_the_aggregator_knows_which_rules_are_coordinate_wise():
    from tsfl.config import ROBUST_AGGREGATORS, RobustSpec
    from tsfl.robust.build import COORDINATE_RULES, build_robust, coordinate_estimator

    for name in ROBUST_AGGREGATORS[1:]:
        spec = RobustSpec(aggregator=name, num_malicious=1, max_norm=1.0)
        rule = build_robust(spec, root_update=np.ones(3, dtype=np.float32))
        assert (rule.kind == "coordinate") == (name in COORDINATE_RULES), name
        assert (coordinate_estimator(spec) is not None) == (name in COORDINATE_RULES)
    with pytest.raises(ValueError, match="root update"):
        build_robust(RobustSpec(aggregator="fltrust"))
