"""Uplink bytes against final accuracy, per codec chain, on digits and on Synthetic.

Every chain trains the same job (same partition, initial weights, cohorts and seeds) with
``tsfl run``'s embedded deployment; float32 FedAvg is the peer. Accuracy is the final
round's and the mean of the last five evaluated rounds (less noisy); bytes are the
encoded update frames the coordinator received. A second table measures the other
savings: lossless downlink deltas, skipped uploads, and adaptive per-device codecs
against the round's straggler time on simulated links.

Run: ``python -m benchmarks.compression [--seeds 0 1] [--rounds 80]``; writes
``results/compression.json`` and ``results/compression.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.progress import Progress

from benchmarks._common import RESULTS, console, print_table, write_results
from tsfl.config import parse_job
from tsfl.runtime.embedded import run_embedded

EXAMPLE = Path(__file__).parents[1] / "libs" / "tsfl" / "examples" / "digits-compressed.yaml"
SYNTHETIC = {
    "name": "synthetic-compressed", "seed": 0, "rounds": 60,
    "data": {"dataset": "synthetic", "synthetic": {"alpha": 1.0, "beta": 1.0}},
    "clients": {"count": 100, "per_round": 10},
    "model": {"kind": "mlp", "hidden": [64]},
    "training": {"optimizer": "sgd", "lr": 0.05, "epochs": 2, "batch_size": 10},
    "strategy": {"name": "fedavg"}, "evaluation": {"every": 1},
}
#: skip threshold: late in the digits run, devices change their model by 3–17% a round
SKIP_BELOW = 0.04
#: (label, uplink settings); float32 first (the peer)
CHAINS: list[tuple[str, dict[str, Any]]] = [
    ("f32", {"chain": ["f32"]}),
    ("q8", {"chain": ["q8"]}),
    ("q4+zstd", {"chain": ["q4", "zstd"]}),
    ("qsgd+zstd", {"chain": ["qsgd", "zstd"], "levels": 16}),
    ("randk 10% +EF", {"chain": ["randk", "f32"], "ratio": 0.1}),
    ("topk 10% no EF", {"chain": ["topk", "q8", "zstd"], "ratio": 0.1,
                        "error_feedback": False}),
    ("topk 20%+q8+zstd +EF", {"chain": ["topk", "q8", "zstd"], "ratio": 0.2}),
    ("topk 10%+q8+zstd +EF", {"chain": ["topk", "q8", "zstd"], "ratio": 0.1}),
    ("topk 5%+q8+zstd +EF", {"chain": ["topk", "q8", "zstd"], "ratio": 0.05}),
    ("topk 1%+q8+zstd +EF", {"chain": ["topk", "q8", "zstd"], "ratio": 0.01}),
]


def run(spec: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        result = asyncio.run(run_embedded(parse_job(spec), Path(out)))
    accs = [m["test_accuracy"] for m in result.metrics if m["test_accuracy"] is not None]
    slow = [m["slowest_upload_s"] for m in result.metrics if m["slowest_upload_s"]]
    return {"bytes_up": sum(m["bytes_up"] for m in result.metrics),
            "bytes_down": sum(m["bytes_down"] for m in result.metrics),
            "final_accuracy": accs[-1], "last5_accuracy": float(np.mean(accs[-5:])),
            "skipped": sum(m["skipped"] for m in result.metrics),
            "updates": sum(m["clients"] for m in result.metrics),
            "mean_slowest_upload_s": statistics.fmean(slow) if slow else None}


def with_compression(base: dict[str, Any], seed: int, **compression: Any) -> dict[str, Any]:
    spec = copy.deepcopy(base)
    spec["seed"] = seed
    spec["compression"] = compression
    return spec


def sweep(name: str, base: dict[str, Any], seeds: list[int], progress: Progress
          ) -> dict[str, Any]:
    task = progress.add_task(name, total=len(CHAINS) * len(seeds))
    rows: dict[str, Any] = {}
    for label, uplink in CHAINS:
        runs = []
        for seed in seeds:
            runs.append(run(with_compression(base, seed, uplink=uplink)))
            progress.advance(task)
        rows[label] = {"uplink": uplink, "runs": runs,
                       **{k: statistics.fmean(r[k] for r in runs)
                          for k in ("bytes_up", "final_accuracy", "last5_accuracy")}}
    peer = rows["f32"]
    for row in rows.values():
        row["uplink_reduction"] = peer["bytes_up"] / row["bytes_up"]
        row["accuracy_drop_pp"] = 100 * (peer["final_accuracy"] - row["final_accuracy"])
        row["last5_drop_pp"] = 100 * (peer["last5_accuracy"] - row["last5_accuracy"])
    return rows


def savings(base: dict[str, Any], seed: int) -> dict[str, Any]:
    """Downlink deltas, skipped uploads and adaptive codecs, each against its baseline."""
    uplink = {"chain": ["topk", "q8", "zstd"], "ratio": 0.1}
    full = run(with_compression(base, seed, uplink=uplink))
    delta = run(with_compression(base, seed, uplink=uplink, downlink="delta"))
    skip = run(with_compression(base, seed, uplink=uplink, skip_below=SKIP_BELOW))
    net_base = {**copy.deepcopy(base), "round": {"deadline_s": 2.0},
                "simulation": {"network": {"bandwidth_mbps": 0.5, "bandwidth_sigma": 1.0,
                                           "latency_ms": 50}}}
    plain_net = run(with_compression(net_base, seed))
    adaptive = run(with_compression(net_base, seed, uplink={"chain": ["f32", "zstd"]},
                                    adaptive={"deadline_fraction": 0.25, "min_ratio": 0.01}))
    return {
        "downlink": {"full_bytes": full["bytes_down"], "delta_bytes": delta["bytes_down"],
                     "reduction": full["bytes_down"] / delta["bytes_down"],
                     "accuracy": [full["final_accuracy"], delta["final_accuracy"]]},
        "skip": {"threshold": SKIP_BELOW, "skipped": skip["skipped"], "updates": skip["updates"],
                 "bytes_up": skip["bytes_up"], "baseline_bytes_up": full["bytes_up"],
                 "accuracy": [full["final_accuracy"], skip["final_accuracy"]]},
        "adaptive": {"deadline_budget_s": 0.5,
                     "f32_mean_slowest_upload_s": plain_net["mean_slowest_upload_s"],
                     "adaptive_mean_slowest_upload_s": adaptive["mean_slowest_upload_s"],
                     "f32_bytes_up": plain_net["bytes_up"],
                     "adaptive_bytes_up": adaptive["bytes_up"],
                     "accuracy": [plain_net["final_accuracy"], adaptive["final_accuracy"]]},
    }


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(data["datasets"]), figsize=(6 * len(data["datasets"]), 4.5))
    for ax, (name, rows) in zip(np.atleast_1d(axes), data["datasets"].items(), strict=True):
        for label, row in rows.items():
            ax.scatter(row["bytes_up"] / 1e6, 100 * row["final_accuracy"], s=30)
            ax.annotate(label, (row["bytes_up"] / 1e6, 100 * row["final_accuracy"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("uplink MB (whole run)")
        ax.set_ylabel("final test accuracy %")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rounds", type=int, default=None, help="override every job's rounds")
    args = ap.parse_args()
    digits = yaml.safe_load(EXAMPLE.read_text())
    digits.pop("compression")
    bases = {"digits (MLP 64-64, 8,970 parameters)": digits,
             "Synthetic(1,1) (MLP 64, 4,554 parameters)": SYNTHETIC}
    if args.rounds:
        for b in bases.values():
            b["rounds"] = args.rounds
    data: dict[str, Any] = {"seeds": args.seeds, "datasets": {}}
    with Progress(console=console) as progress:
        for name, base in bases.items():
            data["datasets"][name] = sweep(name, base, args.seeds, progress)
        data["savings"] = savings(digits, args.seeds[0])
    for name, rows in data["datasets"].items():
        print_table(name, ["chain", "uplink MB", "× fewer", "final acc", "Δ pp",
                           "last-5 acc", "Δ pp"],
                    [[label, r["bytes_up"] / 1e6, r["uplink_reduction"], r["final_accuracy"],
                      r["accuracy_drop_pp"], r["last5_accuracy"], r["last5_drop_pp"]]
                     for label, r in rows.items()])
    console.print(data["savings"])
    plot(data, RESULTS / "compression.png")
    console.print(f"wrote {write_results('compression', data)}")


if __name__ == "__main__":
    main()
