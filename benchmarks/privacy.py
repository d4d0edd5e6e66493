"""Differential privacy: accuracy against ε, membership inference, and the cost per round.

For each dataset (digits: ``examples/digits-dp.yaml``; Synthetic-IID over 5,000 clients:
``examples/synthetic-dp.yaml``) and each ε ∈ {1, 2, 4, 8, ∞}, central and local DP, the
job runs embedded with the noise calibrated to ε over its rounds (δ = 1e-5). Reported:
final accuracy and its ratio to the non-private run (the peer), the ε the ledger spent,
the time per round against the non-private run, and a loss-threshold membership-inference
attack (Yeom et al., CSF 2018): AUC of −loss separating training examples of the
participating clients from held-out ones.

Run: ``python -m benchmarks.privacy [--rounds N] [--quick]``; writes
``results/privacy.json`` and ``results/privacy.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from benchmarks._common import RESULTS, console, print_table, write_results
from tsfl.config import JobSpec, bundled_example, load_job
from tsfl.runtime.embedded import run_embedded
from tsfl.runtime.simulation import build_federation

EPSILONS = [1.0, 2.0, 4.0, 8.0, None]  # None: no DP


def _spec(base: JobSpec, mode: str, eps: float | None, rounds: int) -> JobSpec:
    data = base.model_dump(mode="json")
    data["rounds"] = rounds
    p = data["privacy"]
    if eps is None:
        data["privacy"] = {"mode": "none"}
    else:
        data["privacy"] = {"mode": mode, "clip_norm": p["clip_norm"], "target_epsilon": eps,
                           "delta": p["delta"], "sampling": "poisson"}
    data["name"] = f"{base.name}-{mode}-{eps or 'inf'}"
    return JobSpec.model_validate(data)


def _mia_auc(spec: JobSpec, vector: np.ndarray) -> float:
    fed = build_federation(spec)
    fed.evaluator.load(vector)
    module = fed.evaluator.module
    members_x = np.concatenate([fed.clients[c].x.numpy() for c in fed.client_ids])
    members_y = np.concatenate([fed.clients[c].y.numpy() for c in fed.client_ids])
    rng = np.random.default_rng(0)
    n = min(len(members_y), len(fed.y_test))
    pick = rng.choice(len(members_y), n, replace=False)

    def losses(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module(torch.as_tensor(x))
            return torch.nn.functional.cross_entropy(out, torch.as_tensor(y),
                                                     reduction="none").numpy()

    xt = fed.x_test.numpy() if hasattr(fed.x_test, "numpy") else fed.x_test
    yt = fed.y_test.numpy() if hasattr(fed.y_test, "numpy") else fed.y_test
    scores = np.concatenate([-losses(members_x[pick], members_y[pick]), -losses(xt[:n], yt[:n])])
    labels = np.concatenate([np.ones(n), np.zeros(n)])
    return float(roc_auc_score(labels, scores))


def run_one(spec: JobSpec) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        res = asyncio.run(run_embedded(spec, Path(tmp)))
    walls = [m["wall_s"] for m in res.metrics]
    final = next(m["test_accuracy"] for m in reversed(res.metrics)
                 if m["test_accuracy"] is not None)
    return {"accuracy": final, "epsilon": res.metrics[-1].get("epsilon"),
            "noise_multiplier": res.spec.privacy.noise_multiplier,
            "round_s": statistics.median(walls), "rounds": len(res.metrics),
            "status": res.status, "reason": res.reason,
            "mia_auc": _mia_auc(spec, res.final_vector),
            "curve": [m["test_accuracy"] for m in res.metrics]}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (dataset, rows) in zip(axes[0], results.items(), strict=True):
        for mode, color in (("central", "tab:blue"), ("local", "tab:orange")):
            pts = [(r["target_epsilon"], r["accuracy"]) for r in rows
                   if r["mode"] == mode and r["target_epsilon"] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", color=color, label=f"{mode} DP")
        base = [r["accuracy"] for r in rows if r["target_epsilon"] is None]
        if base:
            ax.axhline(base[0], color="k", linestyle="--", label="no DP")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ε (δ = 1e-5)")
        ax.set_ylabel("final test accuracy")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def overhead(repeats: int, rounds: int) -> dict[str, Any]:
    """DP's cost per round on digits: non-private and central-DP (ε = 8) runs alternate,
    so machine noise hits both alike; the ratio of the medians is reported."""
    base = load_job(bundled_example("digits-dp"))
    times: dict[str, list[float]] = {"none": [], "central": []}
    for i in range(repeats):
        for mode, eps in (("none", None), ("central", 8.0)):
            console.print(f"overhead run {i + 1}/{repeats}: {mode}")
            times[mode].append(run_one(_spec(base, "central", eps, rounds))["round_s"])
    ratio = statistics.median(times["central"]) / statistics.median(times["none"])
    print_table(f"digits: s/round, {repeats} alternating runs of {rounds} rounds",
                ["no DP", "central DP ε=8", "ratio"],
                [[statistics.median(times["none"]), statistics.median(times["central"]),
                  ratio]])
    return {"runs": times, "rounds": rounds, "ratio": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds per job (default: each example's own: 60 digits, 100 synthetic)")
    ap.add_argument("--quick", action="store_true", help="digits only, central only")
    ap.add_argument("--overhead", action="store_true",
                    help="only the round-time overhead (alternating runs; privacy_overhead.json)")
    args = ap.parse_args()
    if args.overhead:
        out = write_results("privacy_overhead", overhead(5, args.rounds or 30))
        console.print(f"wrote {out}")
        return
    datasets = {"digits": bundled_example("digits-dp")}
    if not args.quick:
        datasets["synthetic-5000"] = bundled_example("synthetic-dp")
    results: dict[str, list[dict[str, Any]]] = {}
    for name, path in datasets.items():
        base = load_job(path)
        rounds = args.rounds or base.rounds
        rows = []
        for mode in ("central",) if args.quick else ("central", "local"):
            for eps in EPSILONS:
                if eps is None and mode == "local":
                    continue
                console.print(f"[bold]{name}[/] {mode} ε={eps or '∞'}")
                r = run_one(_spec(base, mode, eps, rounds))
                rows.append({"mode": mode if eps else "none", "target_epsilon": eps, **r})
        base_row = next(r for r in rows if r["target_epsilon"] is None)
        for r in rows:
            r["accuracy_vs_nodp"] = r["accuracy"] / base_row["accuracy"]
            r["round_time_vs_nodp"] = r["round_s"] / base_row["round_s"]
        results[name] = rows
        print_table(f"{name}: accuracy against ε ({rounds} rounds)",
                    ["mode", "ε target", "ε spent", "z", "accuracy", "vs no DP", "MIA AUC",
                     "round s", "vs no DP"],
                    [[r["mode"], r["target_epsilon"] or "∞", r["epsilon"] or "-",
                      r["noise_multiplier"] or "-", r["accuracy"], r["accuracy_vs_nodp"],
                      r["mia_auc"], r["round_s"], r["round_time_vs_nodp"]] for r in rows])
    out = write_results("privacy", {"rounds": {n: args.rounds or load_job(p).rounds
                                               for n, p in datasets.items()},
                                    "results": results})
    plot(results, RESULTS / "privacy.png")
    console.print(f"wrote {out} and {RESULTS / 'privacy.png'}")


if __name__ == "__main__":
    main()
