"""Empirical privacy audit: one-run ε lower bounds against the accounted ε.

``examples/digits-dp.yaml`` (central Gaussian DP, Poisson q = 0.1, 60 rounds, logistic
regression, 650 parameters) with its budget set to ε ∈ {1, 2, 4, 8} (δ = 1e-5; the noise
calibrated to it), each run once with canary clients and audited as ``tsfl audit
privacy`` does (Steinke, Nasr & Jagielski 2023, Theorem 3, 95% confidence; random-
direction canaries, Andrew et al. 2024; :mod:`tsfl.runtime.canaries`). The peer is the
accounted ε itself: the ratio bound ÷ accounted says how much of the claimed ε this
adversary (model consumers, every released model) can demonstrate.

First a canary-count sweep at ε = 8 picks the count (more canaries: more guesses, but
more interference between them — the model has only 650 coordinates); then each ε is
audited ``--repeats`` times (noise from the CSPRNG: every run differs) and the median
reported; last, one audited run of the example as shipped, timed.

Run: ``python -m benchmarks.privacy_audit [--repeats N] [--quick]``; writes
``results/privacy_audit.json`` and ``results/privacy_audit.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS, console, print_table, write_results
from tsfl.config import JobSpec, bundled_example, load_job
from tsfl.runtime.canaries import run_privacy_audit

EPSILONS = [1.0, 2.0, 4.0, 8.0]
SWEEP = [250, 500, 1000, 2000]


def _spec(base: JobSpec, eps: float) -> JobSpec:
    data = base.model_dump(mode="json")
    data["privacy"] = {**data["privacy"], "target_epsilon": eps, "noise_multiplier": None}
    data["name"] = f"{base.name}-eps{eps:g}"
    return JobSpec.model_validate(data)


def audit_once(spec: JobSpec, canaries: int, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = asyncio.run(run_privacy_audit(spec, Path(tmp), canaries=canaries, seed=seed))
    wall = time.perf_counter() - t0
    r = res.result
    best = {s: max(c.epsilon for c in r.candidates if c.statistic == s) for s in res.scores}
    return {"canaries": canaries, "seed": seed, "accounted": res.accounted_epsilon,
            "bound": r.epsilon, "ratio": res.ratio, "statistic": r.statistic,
            "k_pos": r.k_pos, "k_neg": r.k_neg, "correct": r.correct, "guesses": r.guesses,
            "bound_by_statistic": best, "noise_multiplier": res.spec.privacy.noise_multiplier,
            "rounds": len(res.run.metrics), "status": res.run.status, "wall_s": wall}


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def plot(sweep: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    eps = sorted({r["target"] for r in rows})
    med = [statistics.median(r["bound"] for r in rows if r["target"] == e) for e in eps]
    lo = [min(r["bound"] for r in rows if r["target"] == e) for e in eps]
    hi = [max(r["bound"] for r in rows if r["target"] == e) for e in eps]
    acc = [statistics.median(r["accounted"] for r in rows if r["target"] == e) for e in eps]
    ax.plot(eps, acc, "k--", marker="o", label="accounted ε (PLD)")
    ax.errorbar(eps, med, yerr=[[m - a for m, a in zip(med, lo, strict=True)],
                                [b - m for m, b in zip(med, hi, strict=True)]],
                fmt="o-", color="tab:red", capsize=3, label="empirical lower bound (95%)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("target ε (δ = 1e-5)")
    ax.set_ylabel("ε")
    ax.set_title("digits-dp, central Gaussian DP: one-run audit")
    ax.grid(alpha=0.3)
    ax.legend()
    counts = sorted({r["canaries"] for r in sweep})
    bx.plot(counts, [statistics.median(r["bound"] for r in sweep if r["canaries"] == c)
                     for c in counts], "o-", color="tab:red")
    for r in sweep:
        bx.plot(r["canaries"], r["bound"], ".", color="tab:gray")
    bx.set_xscale("log", base=2)
    bx.set_xlabel("canaries")
    bx.set_ylabel("lower bound at ε = 8")
    bx.set_title("canary count (ε = 8)")
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="audited runs per ε (default 5)")
    ap.add_argument("--sweep-repeats", type=int, default=3,
                    help="runs per canary count in the sweep (default 3)")
    ap.add_argument("--canaries", type=int, help="skip the sweep and use this many")
    ap.add_argument("--quick", action="store_true", help="ε = 8 only, one run, 500 canaries")
    args = ap.parse_args()
    base = load_job(bundled_example("digits-dp"))
    started = time.perf_counter()
    sweep: list[dict[str, Any]] = []
    if args.quick:
        args.canaries, args.repeats = args.canaries or 500, 1
    if args.canaries is None:
        for m in SWEEP:
            for rep in range(args.sweep_repeats):
                console.print(f"sweep: ε = 8, {m} canaries, run {rep + 1}")
                sweep.append(audit_once(_spec(base, 8.0), m, 100 + rep))
        by_count = {m: statistics.median(r["bound"] for r in sweep if r["canaries"] == m)
                    for m in SWEEP}
        chosen = max(by_count, key=lambda m: by_count[m])
        print_table("canary count at ε = 8 (median bound)", ["canaries", "bound", "runs"],
                    [[m, by_count[m], args.sweep_repeats] for m in SWEEP])
    else:
        chosen = args.canaries
    rows: list[dict[str, Any]] = []
    for eps in [8.0] if args.quick else EPSILONS:
        for rep in range(args.repeats):
            console.print(f"ε = {eps:g}: {chosen} canaries, run {rep + 1}/{args.repeats}")
            rows.append({"target": eps, **audit_once(_spec(base, eps), chosen, rep)})
    table = []
    for eps in sorted({r["target"] for r in rows}):
        mine = [r for r in rows if r["target"] == eps]
        table.append({"target": eps, "accounted": _median(mine, "accounted"),
                      "noise_multiplier": mine[0]["noise_multiplier"],
                      "bound_median": _median(mine, "bound"),
                      "bound_min": min(r["bound"] for r in mine),
                      "bound_max": max(r["bound"] for r in mine),
                      "ratio_median": _median(mine, "bound") / _median(mine, "accounted"),
                      "runs": len(mine), "wall_s_median": _median(mine, "wall_s")})
    print_table(f"digits-dp: empirical lower bound (95%) vs accounted ε, {chosen} canaries",
                ["ε target", "ε accounted", "z", "bound (median)", "min", "max",
                 "bound ÷ accounted", "runs", "s/run"],
                [[t["target"], t["accounted"], t["noise_multiplier"], t["bound_median"],
                  t["bound_min"], t["bound_max"], t["ratio_median"], t["runs"],
                  t["wall_s_median"]] for t in table])
    # the example as shipped, audited as `tsfl audit privacy examples/digits-dp.yaml` does
    console.print("examples/digits-dp.yaml, audited with the CLI's default 1000 canaries")
    example = audit_once(base, 1000, base.seed)
    print_table("tsfl audit privacy examples/digits-dp.yaml",
                ["canaries", "accounted ε", "bound", "ratio", "correct/guesses", "wall s"],
                [[example["canaries"], example["accounted"], example["bound"],
                  example["ratio"], f"{example['correct']}/{example['guesses']}",
                  example["wall_s"]]])
    total = time.perf_counter() - started
    out = write_results("privacy_audit", {
        "job": "examples/digits-dp.yaml", "canaries": chosen, "confidence": 0.95,
        "sweep": sweep, "runs": rows, "table": table, "example": example,
        "total_wall_s": total})
    plot(sweep, rows, RESULTS / "privacy_audit.png")
    console.print(f"wrote {out} and {RESULTS / 'privacy_audit.png'} ({total:.0f} s)")


if __name__ == "__main__":
    main()
