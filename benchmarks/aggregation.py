"""Aggregation: our streaming FedAvg against Flower and an in-place BLAS floor.

For N clients × P float32 parameters, on the same updates in the same run:

* ``tsfl``        — :class:`tsfl.core.accumulator.WeightedAccumulator`: fold each update
                    as it arrives (one saxpy), divide once at close;
* ``flower``      — ``flwr.server.strategy.aggregate.aggregate`` (list-of-arrays API);
* ``numpy_floor`` — one preallocated accumulator and an in-place BLAS axpy per update,
                    nothing else (the floor of what a fold can cost);
* ``tsfl_wire``   — our decoding of the wire frames exactly as the aggregator does it
                    (header, layout and size checks; the checksum was verified by the
                    coordinator at the edge), the fold, and the close with its NaN/Inf
                    check (:class:`tsfl.core.fold.RoundFold`);
* ``flower_msg``  — Flower's Message-API path, ``aggregate_arrayrecords`` over
                    ``RecordDict``s (deserialising each ``Array`` included).

Run: ``python -m benchmarks.aggregation [--quick]``. N = 1000 reuses a pool of 100 distinct
updates (4 MB each at P = 1M, far larger than any cache) to keep memory bounded.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from rich.progress import Progress
from scipy.linalg.blas import saxpy

from benchmarks._common import console, print_table, timeit, write_results
from tsfl.core.accumulator import WeightedAccumulator
from tsfl.core.fold import RoundFold
from tsfl.core.layout import ParamLayout
from tsfl.core.update import Update
from tsfl.wire import decode_update, encode_update


def make_updates(n: int, p: int, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    pool = [rng.random(p, dtype=np.float32) - 0.5 for _ in range(min(n, 100))]
    return [pool[i % len(pool)] for i in range(n)], [int(w) for w in rng.integers(10, 500, n)]


def ours(updates: list[np.ndarray], weights: list[int]) -> np.ndarray:
    acc = WeightedAccumulator(updates[0].shape[0])
    for u, w in zip(updates, weights, strict=True):
        acc.add(u, w)
    return acc.mean_inplace()


def numpy_floor(updates: list[np.ndarray], weights: list[int]) -> np.ndarray:
    acc = np.zeros_like(updates[0])
    for u, w in zip(updates, weights, strict=True):
        saxpy(u, acc, a=w)
    acc *= np.float32(1.0 / sum(weights))
    return acc


def bench(n: int, p: int, repeats: int, with_messages: bool) -> dict[str, float]:
    from flwr.server.strategy.aggregate import aggregate

    updates, weights = make_updates(n, p)
    flower_input = [([u], w) for u, w in zip(updates, weights, strict=True)]
    ref = np.average(np.stack(updates[: min(n, 100)]).astype(np.float64), axis=0,
                     weights=weights[: min(n, 100)]) if n <= 100 else None
    got = ours(updates, weights)
    if ref is not None:  # sanity: all three agree on the result
        assert np.max(np.abs(got - ref)) <= 1e-5 * np.max(np.abs(ref))
        assert np.allclose(aggregate(flower_input)[0], ref, atol=1e-5)
    row = {
        "tsfl_s": timeit(lambda: ours(updates, weights), repeats),
        "flower_s": timeit(lambda: aggregate(flower_input), repeats),
        "numpy_floor_s": timeit(lambda: numpy_floor(updates, weights), repeats),
    }
    if with_messages:
        row.update(_bench_messages(updates, weights, repeats))
    return row


def _bench_messages(updates: list[np.ndarray], weights: list[int], repeats: int
                    ) -> dict[str, float]:
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    p = updates[0].shape[0]
    layout = ParamLayout([("w", (p,), "float32")])
    wire = [encode_update(Update("job", 1, f"c{i}", 0, w, u), layout)
            for i, (u, w) in enumerate(zip(updates, weights, strict=True))]

    def ours_wire() -> np.ndarray:
        # exactly what the aggregator does: decode the frame (checksum verified at the edge
        # by the coordinator), fold, and check finiteness once at close (RoundFold)
        fold = RoundFold(p)
        for data in wire:
            upd = decode_update(data, layout, verify_checksum=False, allow_nonfinite=True)
            fold.add(upd.client_id, upd.delta, upd.num_examples)
        result = fold.close()
        assert not result.rejected
        return result.mean

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = [RecordDict({"arrays": ArrayRecord({"w": Array(u)}),
                               "metrics": MetricRecord({"num-examples": w})})
                   for u, w in zip(updates, weights, strict=True)]

    def flower_msg() -> None:
        aggregate_arrayrecords(records, "num-examples")

    np.testing.assert_allclose(ours_wire(), ours(updates, weights), rtol=1e-6)
    return {"tsfl_wire_s": timeit(ours_wire, repeats),
            "flower_msg_s": timeit(flower_msg, repeats)}


def plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [f"N={r['n']}\nP={r['p'] // 1000}k" for r in rows]
    x = np.arange(len(rows))
    keys = [("tsfl_s", "tsfl"), ("numpy_floor_s", "numpy floor"), ("flower_s", "Flower"),
            ("tsfl_wire_s", "tsfl + decode"), ("flower_msg_s", "Flower Message API")]
    width = 0.16
    for i, (k, label) in enumerate(keys):
        vals = [r.get(k, np.nan) * 1000 for r in rows]
        ax.bar(x + (i - 2) * width, vals, width, label=label)
    ax.set_xticks(x, labels)
    ax.set_yscale("log")
    ax.set_ylabel("ms per aggregation (log)")
    ax.legend(fontsize=8)
    ax.set_title("FedAvg aggregation, float32")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repeats")
    args = parser.parse_args()
    grid = ([(10, 100_000), (100, 100_000)] if args.quick else
            [(n, p) for p in (100_000, 1_000_000) for n in (10, 100, 1000)])
    repeats = 2 if args.quick else 5
    rows = []
    with Progress(console=console) as progress:
        task = progress.add_task("aggregation", total=len(grid))
        for n, p in grid:
            row = {"n": n, "p": p, **bench(n, p, repeats, with_messages=n <= 100)}
            row["vs_flower"] = row["flower_s"] / row["tsfl_s"]
            row["vs_floor"] = row["tsfl_s"] / row["numpy_floor_s"]
            if "flower_msg_s" in row:
                row["wire_vs_flower_msg"] = row["flower_msg_s"] / row["tsfl_wire_s"]
            rows.append(row)
            progress.advance(task)
    print_table("FedAvg aggregation (ms; ratios: Flower/tsfl, tsfl/floor, FlowerMsg/tsfl+decode)",
                ["N", "P", "tsfl", "floor", "Flower", "×Flower", "÷floor", "tsfl+dec",
                 "Flower msg", "×msg"],
                [[r["n"], f"{r['p'] // 1000}k", r["tsfl_s"] * 1e3, r["numpy_floor_s"] * 1e3,
                  r["flower_s"] * 1e3, r["vs_flower"], r["vs_floor"],
                  r.get("tsfl_wire_s", float("nan")) * 1e3,
                  r.get("flower_msg_s", float("nan")) * 1e3,
                  r.get("wire_vs_flower_msg", float("nan"))] for r in rows])
    name = "aggregation_quick" if args.quick else "aggregation"
    path = write_results(name, {"rows": rows, "repeats": repeats})
    plot(rows, path.with_suffix(".png"))
    console.print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
