"""Many jobs on one stack: N concurrent jobs × 10 lightweight gRPC devices each (real
frames, logreg on Synthetic-IID) against one local stack, every job on the same stack
and the same fleet processes; the per-round time against one job alone in the same run.
Target (issue #20): 100 concurrent jobs × 10 devices complete; per-round overhead
against one job reported.

    python -m benchmarks.many_jobs [--jobs 1 10 100] [--devices 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks._common import console, print_table, write_results
from tsfl.runtime.loadtest import LoadTestOptions, run_loadtest


def row(report: dict[str, Any], base_round_s: float | None) -> dict[str, Any]:
    coord = report["processes"].get("coordinator", {})
    mean = report["round_s"]["mean"]
    return {"jobs": report["options"]["jobs"], "devices": report["devices_total"],
            "submit_s": report["submit_s"], "wall_s": report["wall_s"],
            "round_s_mean": mean, "round_s_max": report["round_s"]["max"],
            "overhead_vs_one_job": (round(mean / base_round_s, 2)
                                    if mean and base_round_s else None),
            "job_status": report["job_status"], "counted_once": report["counted_once"]["ok"],
            "poll_p99_ms": report["poll_ms"]["p99"], "upload_p99_ms": report["upload_ms"]["p99"],
            "coordinator_cpu_s": coord.get("cpu_s"),
            "coordinator_peak_rss_mb": coord.get("peak_rss_mb")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--devices", type=int, default=10, help="devices per job")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--poll-s", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    reports, rows = [], []
    base = None
    for jobs in sorted(args.jobs):
        report = run_loadtest(LoadTestOptions(
            devices=args.devices, jobs=jobs, rounds=args.rounds, dim=1000, classes=10,
            workers=2, channels=4, poll_s=args.poll_s, timeout_s=args.timeout))
        reports.append(report)
        if base is None:
            base = report["round_s"]["mean"]
        rows.append(row(report, base))
        console.print(rows[-1])
    cols = ["jobs", "devices", "submit_s", "round_s_mean", "round_s_max",
            "overhead_vs_one_job", "counted_once", "poll_p99_ms", "coordinator_peak_rss_mb"]
    print_table("concurrent jobs", cols, [[r[c] for c in cols] for r in rows])
    path = write_results("many_jobs", {"rows": rows, "reports": reports})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
