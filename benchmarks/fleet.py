"""The distributed stack under a fleet: 1k / 3k / 10k lightweight gRPC devices (real frames,
a logreg of ~10k parameters on Synthetic-IID) against a local stack on this machine
(`tsfl loadtest`, :mod:`tsfl.runtime.loadtest`). Reports registrations/s, task-poll /
download / upload p50 and p99, round time, CPU and peak RSS of every process, and whether
every (round, client) was counted exactly once. Targets (issue #20): 10k uploads counted
once, task-poll p99 ≤ 200 ms at that load, coordinator RSS ≤ 1 GB.

    python -m benchmarks.fleet [--sizes 1000 3000 10000] [--rounds 2] [--poll-s 5]
    python -m benchmarks.fleet --reports a.json b.json ...   # tables/plot from tsfl loadtest --out
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS, console, print_table, write_results
from tsfl.runtime.loadtest import LoadTestOptions, run_loadtest

TARGET_POLL_P99_MS = 200.0
TARGET_COORDINATOR_MB = 1024.0


def row(report: dict[str, Any]) -> dict[str, Any]:
    """A report's headline numbers, with the issue's targets checked."""
    coord = report["processes"].get("coordinator", {})
    return {"devices": report["devices_total"], "rounds": report["options"]["rounds"],
            "poll_s": report["options"]["poll_s"],
            "registrations_per_s": report["registrations_per_s"],
            "register_p99_ms": report["register_ms"]["p99"],
            "poll_p50_ms": report["poll_ms"]["p50"], "poll_p99_ms": report["poll_ms"]["p99"],
            "download_p99_ms": report["download_ms"]["p99"],
            "upload_p50_ms": report["upload_ms"]["p50"],
            "upload_p99_ms": report["upload_ms"]["p99"],
            "round_s": report["round_s"]["mean"], "counted_once": report["counted_once"]["ok"],
            "coordinator_cpu_s": coord.get("cpu_s"),
            "coordinator_peak_rss_mb": coord.get("peak_rss_mb"),
            "retries": sum(report["retries"].values()),
            "failures": sum(report["failures"].values()),
            "poll_target_met": (report["poll_ms"]["p99"] or 1e9) <= TARGET_POLL_P99_MS,
            "rss_target_met": (coord.get("peak_rss_mb") or 1e9) <= TARGET_COORDINATOR_MB}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["devices"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    ax = axes[0]
    for key, label in (("poll_p50_ms", "task poll p50"), ("poll_p99_ms", "task poll p99"),
                       ("upload_p50_ms", "upload p50"), ("upload_p99_ms", "upload p99")):
        ax.plot(n, [r[key] for r in rows], marker="o", label=label)
    ax.axhline(TARGET_POLL_P99_MS, color="grey", ls="--", lw=0.8, label="poll p99 target")
    ax.set(xscale="log", yscale="log", xlabel="devices", ylabel="ms", title="latency")
    ax.legend(fontsize=7)
    axes[1].plot(n, [r["registrations_per_s"] for r in rows], marker="o")
    axes[1].set(xscale="log", xlabel="devices", ylabel="registrations / s",
                title="enrolment throughput")
    axes[2].plot(n, [r["round_s"] for r in rows], marker="o")
    axes[2].set(xscale="log", xlabel="devices", ylabel="s", title="round time (store)")
    axes[3].plot(n, [r["coordinator_peak_rss_mb"] for r in rows], marker="o",
                 label="coordinator peak RSS (MB)")
    axes[3].plot(n, [r["coordinator_cpu_s"] for r in rows], marker="s",
                 label="coordinator CPU (s)")
    axes[3].axhline(TARGET_COORDINATOR_MB, color="grey", ls="--", lw=0.8, label="1 GB")
    axes[3].set(xscale="log", xlabel="devices", title="coordinator")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--poll-s", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=840.0)
    ap.add_argument("--reports", nargs="+", help="reports written by tsfl loadtest --out "
                                                 "(nothing is run)")
    args = ap.parse_args()
    if args.reports:
        reports = [json.loads(Path(p).read_text()) for p in args.reports]
    else:
        reports = [run_loadtest(LoadTestOptions(
            devices=n, rounds=args.rounds, poll_s=args.poll_s, workers=args.workers,
            channels=args.channels, timeout_s=args.timeout)) for n in args.sizes]
    reports.sort(key=lambda r: r["devices_total"])
    rows = [row(r) for r in reports]
    cols = ["devices", "registrations_per_s", "poll_p50_ms", "poll_p99_ms", "upload_p50_ms",
            "upload_p99_ms", "round_s", "counted_once", "coordinator_peak_rss_mb"]
    print_table("fleet load test", cols, [[r[c] for c in cols] for r in rows])
    path = write_results("fleet", {"rows": rows, "reports": reports})
    plot(rows, RESULTS / "fleet.png")
    console.print(f"wrote {path} and {RESULTS / 'fleet.png'}")


if __name__ == "__main__":
    main()
