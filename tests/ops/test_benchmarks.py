"""The benchmarks keep running (tiny sizes; timings are never asserted)."""

import numpy as np

from benchmarks import aggregation, end_to_end
from tsfl.config import load_job


def test_aggregation_benchmark_runs_and_contenders_agree():
    row = aggregation.bench(10, 5000, repeats=1, with_messages=True)
    assert set(row) == {"tsfl_s", "flower_s", "numpy_floor_s", "tsfl_wire_s", "flower_msg_s"}
    updates, weights = aggregation.make_updates(10, 5000)
    np.testing.assert_allclose(aggregation.ours(updates, weights),
                               aggregation.numpy_floor(updates, weights), rtol=1e-6)


def test_end_to_end_tsfl_follows_the_plain_loop_round_for_round():
    spec = load_job(end_to_end.CONFIG, {"rounds": 4, "target_accuracy": 0.99})
    plain, ours = end_to_end.run_plain(spec), end_to_end.run_tsfl(spec)
    assert plain["rounds"] == ours["rounds"] == 4
    assert abs(plain["final_accuracy"] - ours["final_accuracy"]) < 1e-9


def test_receiving_a_large_model_holds_it_once():
    """A 64 MB model over real gRPC from a coordinator process: the device's peak memory
    is the model plus a bounded number of chunks (the naive way holds about two)."""
    from benchmarks import transfer

    data = transfer.run(64)
    size = data["model_bytes"]
    assert data["results"]["tsfl"]["peak_bytes"] < size + 40 * 1024**2
    assert data["results"]["naive"]["peak_bytes"] > 1.6 * size


def test_codec_benchmark_runs_every_chain():
    from benchmarks import codecs

    data = codecs.bench(50_000, repeats=1)
    assert {"topk+q8", "numpy_topk+q8", "qsgd+zstd"} <= set(data["results"])
    assert data["results"]["topk+q8"]["compression"] > 50


def test_he_benchmark_runs_and_matches_the_plaintext_sum():
    from benchmarks import he

    data = he.bench([20_000], [20_000])
    row = data["rows"][0]
    for key in ("he", "he_selective_10", "threshold", "tenseal"):
        assert row[key]["max_abs_error"] < 1e-4
    assert row["he"]["expansion"] <= 4.0 < row["tenseal"]["expansion"]
    assert row["he_selective_10"]["encrypted"] == 2000
    # 20k values pad their last 4096-coefficient ciphertext (3.75 × 20480 / 20000)
    assert row["threshold"]["expansion"] < 3.9
    assert set(row["threshold_vs_shared"]) == {"encrypt", "aggregate", "decrypt", "bytes"}
