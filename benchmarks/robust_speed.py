"""Robust aggregation speed: our Gram-matrix rules against Flower's on the same updates.

100 updates of 100k parameters, f = 10 (the issue's workload): Krum, Multi-Krum, Bulyan,
median and trimmed mean from ``flwr.server.strategy.aggregate`` and from
:mod:`tsfl.robust`, plus WFAgg (ours only; its target is "no slower than Flower's
Krum"). Results must agree (checked each run) before timings are compared.

Run: ``python -m benchmarks.robust_speed [--n 100] [--d 100000] [--f 10]``; writes
``results/robust_speed.json``.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from flwr.server.strategy import aggregate as flwr_agg

from benchmarks._common import console, print_table, timeit, write_results
from tsfl.robust.aggregators import Bulyan, Krum, Median, MultiKrum, TrimmedMean
from tsfl.robust.wfagg import WFAgg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--d", type=int, default=100_000)
    ap.add_argument("--f", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = (rng.normal(size=args.d) + 0.1 * rng.normal(size=(args.n, args.d))).astype(np.float32)
    x[: args.f] *= -1.0
    results = [([row], 1) for row in x]
    f, keep = args.f, args.n - args.f
    ids = [f"c{i}" for i in range(args.n)]
    cases: list[tuple[str, Any, Any]] = [
        ("krum", lambda: Krum(f).aggregate(x).vector,
         lambda: flwr_agg.aggregate_krum(results, f, 0)[0]),
        ("multikrum", lambda: MultiKrum(f, keep).aggregate(x).vector,
         lambda: flwr_agg.aggregate_krum(results, f, keep)[0]),
        ("bulyan", lambda: Bulyan(f).aggregate(x).vector,
         lambda: flwr_agg.aggregate_bulyan(list(results), f, flwr_agg.aggregate_krum,
                                           to_keep=0)[0]),
        ("median", lambda: Median().aggregate(x).vector,
         lambda: flwr_agg.aggregate_median(results)[0]),
        ("trimmed_mean", lambda: TrimmedMean(0.1).aggregate(x).vector,
         lambda: flwr_agg.aggregate_trimmed_avg(results, 0.1)[0]),
    ]
    rows, out = [], {}
    for name, ours, theirs in cases:
        np.testing.assert_allclose(ours(), theirs(), rtol=1e-4, atol=1e-5)
        console.print(f"timing {name}")
        t_ours = timeit(ours, repeats=args.repeats)
        t_flwr = timeit(theirs, repeats=1 if name == "bulyan" else args.repeats, warmup=0)
        out[name] = {"tsfl_s": t_ours, "flower_s": t_flwr, "speedup": t_flwr / t_ours}
        rows.append([name, t_ours * 1e3, t_flwr * 1e3, t_flwr / t_ours])
    t_wf = timeit(lambda: WFAgg(f).aggregate(x, clients=ids), repeats=args.repeats)
    out["wfagg"] = {"tsfl_s": t_wf, "flower_krum_s": out["krum"]["flower_s"],
                    "vs_flower_krum": out["krum"]["flower_s"] / t_wf}
    rows.append(["wfagg (vs Flower's Krum)", t_wf * 1e3, out["krum"]["flower_s"] * 1e3,
                 out["krum"]["flower_s"] / t_wf])
    print_table(f"robust aggregation: {args.n} updates × {args.d} parameters, f = {f}",
                ["rule", "tsfl ms", "flower ms", "speed-up"], rows)
    path = write_results("robust_speed", {"n": args.n, "d": args.d, "f": f, "results": out})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
