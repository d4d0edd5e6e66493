import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsfl.core.accumulator import AccumulatorError, WeightedAccumulator


def _reference(vectors, weights):
    return np.average(np.stack(vectors).astype(np.float64), axis=0, weights=weights)


@pytest.mark.parametrize(("n", "p"), [(1, 10), (10, 1000), (100, 10_000)])
def test_matches_numpy_weighted_mean(n, p):
    rng = np.random.default_rng(n)
    vectors = [rng.normal(size=p).astype(np.float32) for _ in range(n)]
    weights = rng.integers(1, 500, size=n).astype(float)
    acc = WeightedAccumulator(p)
    for v, w in zip(vectors, weights, strict=True):
        acc.add(v, w)
    ref = _reference(vectors, weights)
    got = acc.mean()
    scale = np.max(np.abs(ref))
    assert np.max(np.abs(got - ref)) <= 1e-6 * scale
    assert acc.count == n and acc.total_weight == pytest.approx(weights.sum())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.lists(st.floats(-1e3, 1e3), min_size=5, max_size=5),
                          st.integers(1, 1000)), min_size=1, max_size=20))
def test_property_weighted_mean(items):
    acc = WeightedAccumulator(5)
    for values, w in items:
        acc.add(np.asarray(values, np.float32), w)
    ref = _reference([np.asarray(v, np.float32) for v, _ in items], [w for _, w in items])
    np.testing.assert_allclose(acc.mean(), ref, rtol=1e-5, atol=1e-3)


def test_merge_equals_single_fold():
    rng = np.random.default_rng(3)
    vs = [rng.normal(size=50).astype(np.float32) for _ in range(6)]
    one, a, b = WeightedAccumulator(50), WeightedAccumulator(50), WeightedAccumulator(50)
    for i, v in enumerate(vs):
        one.add(v, i + 1)
        (a if i < 3 else b).add(v, i + 1)
    a.merge(b)
    np.testing.assert_allclose(a.mean(), one.mean(), rtol=1e-6)


def test_memory_is_one_vector_whatever_the_number_of_clients():
    acc = WeightedAccumulator(1000)
    v = np.ones(1000, np.float32)
    for _ in range(500):
        acc.add(v, 2.0)
    assert acc.weighted_sum.nbytes == 4000
    np.testing.assert_allclose(acc.mean_inplace(), 1.0)


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_rejects_bad_weights(weight):
    with pytest.raises(AccumulatorError):
        WeightedAccumulator(3).add(np.ones(3, np.float32), weight)


def test_rejects_wrong_vectors_and_empty_mean():
    acc = WeightedAccumulator(3)
    with pytest.raises(AccumulatorError):
        acc.add(np.ones(4, np.float32), 1)
    with pytest.raises(AccumulatorError):
        acc.add(np.ones(3, np.float64), 1)
    with pytest.raises(AccumulatorError):
        acc.mean()


# -- RoundFold: deferred finiteness check -------------------------------------------------------
from tsfl.core.fold import RoundFold  # noqa: E402


def _strict(items):
    acc = WeightedAccumulator(len(items[0][1]))
    for _, v, w in items:
        if np.isfinite(v).all():
            acc.add(v, w)
    return acc.mean()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_round_fold_refuses_nonfinite_and_equals_a_strict_fold(bad):
    rng = np.random.default_rng(0)
    items = [(f"c{i}", rng.normal(size=100).astype(np.float32), float(i + 1)) for i in range(6)]
    poisoned = items[2][1].copy()
    poisoned[17] = bad
    items[2] = ("c2", poisoned, 3.0)
    fold = RoundFold(100)
    for key, v, w in items:
        fold.add(key, v, w)
    result = fold.close()
    assert list(result.rejected) == ["c2"] and "nonfinite" in result.rejected["c2"]
    assert result.accepted == ["c0", "c1", "c3", "c4", "c5"]
    np.testing.assert_array_equal(result.mean, _strict(items))  # bit-identical


def test_round_fold_clean_path_and_empty_and_overflow():
    fold = RoundFold(3)
    fold.add("a", np.ones(3, np.float32), 1)
    fold.add("b", np.full(3, 3, np.float32), 1)
    result = fold.close()
    np.testing.assert_array_equal(result.mean, 2.0)
    assert result.rejected == {} and result.total_weight == 2
    assert RoundFold(3).close().mean is None
    big = RoundFold(2)
    big.add("a", np.full(2, 3e38, np.float32), 1)
    big.add("b", np.full(2, 3e38, np.float32), 1)
    over = big.close()  # the update that overflows is refused, not the round
    assert over.accepted == ["a"] and list(over.rejected) == ["b"]
    assert "overflow" in over.rejected["b"]
    allbad = RoundFold(2)
    allbad.add("a", np.array([np.nan, 0], np.float32), 1)
    res = allbad.close()
    assert res.mean is None and list(res.rejected) == ["a"]


@pytest.mark.parametrize("window", [1, 3, 4, 16])
def test_round_fold_windows_equal_a_strict_fold_wherever_the_bad_updates_fall(window):
    rng = np.random.default_rng(window)
    items = [(f"c{i}", rng.normal(size=50).astype(np.float32), float(rng.integers(1, 9)))
             for i in range(11)]
    for i, bad in ((1, np.nan), (6, np.inf), (10, -np.inf)):
        v = items[i][1].copy()
        v[i] = bad
        items[i] = (items[i][0], v, items[i][2])
    fold = RoundFold(50, window=window)
    for key, v, w in items:
        fold.add(key, v, w)
    result = fold.close()
    assert sorted(result.rejected) == ["c1", "c10", "c6"]
    assert result.accepted == [k for k, _, _ in items if k not in ("c1", "c6", "c10")]
    np.testing.assert_array_equal(result.mean, _strict(items))  # bit-identical
    assert result.total_weight == sum(w for k, _, w in items if k not in result.rejected)


def test_round_fold_keeps_at_most_a_window_of_updates_alive():
    import gc
    import weakref

    fold = RoundFold(1000, window=8)
    refs = []
    for i in range(100):
        v = np.full(1000, float(i), np.float32)
        refs.append(weakref.ref(v))
        fold.add(i, v, 1.0)
        del v
    gc.collect()
    assert sum(r() is not None for r in refs) <= 8
    np.testing.assert_allclose(fold.close().mean, 49.5)


def test_an_overflowing_update_is_refused_and_the_honest_ones_aggregate():
    """The issue's attack: 3e38 everywhere used to fail the round and lose the honest
    updates; now the offender goes, whatever window it falls in."""
    for window in (1, 2, 16):
        fold = RoundFold(2, window=window)
        fold.add("h1", np.ones(2, np.float32), 1)
        fold.add("evil", np.full(2, 3e38, np.float32), 1)
        fold.add("evil2", np.full(2, 3e38, np.float32), 1)  # the sum overflows here
        fold.add("c", np.full(2, np.nan, np.float32), 1)
        fold.add("h2", np.full(2, 3, np.float32), 1)
        res = fold.close()
        assert res.rejected["c"].startswith("nonfinite")
        assert res.rejected["evil2"].startswith("overflow")
        assert res.accepted == ["h1", "evil", "h2"] and res.total_weight == 3
        assert np.all(np.isfinite(res.mean))
