"""``tsfl loadtest``: a fleet load test of the distributed stack
(:mod:`tsfl.runtime.loadtest`), printed as a table and written as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

err = Console(stderr=True)
out = Console()


def cmd_loadtest(args: argparse.Namespace) -> int:
    from tsfl.runtime.loadtest import LoadTestOptions, run_loadtest

    if args.devices < 1 or args.jobs < 1 or args.rounds < 1 or args.workers < 1 \
            or args.channels < 1 or args.poll_s <= 0:
        err.print("[bold red]error:[/] --devices, --jobs, --rounds, --workers and --channels "
                  "must be positive, --poll-s above 0", highlight=False)
        return 2
    if args.min_enrolled is not None and not 1 <= args.min_enrolled <= args.devices:
        err.print("[bold red]error:[/] --min-enrolled must be in 1..--devices", highlight=False)
        return 2
    opts = LoadTestOptions(devices=args.devices, jobs=args.jobs, rounds=args.rounds,
                           dim=args.dim, classes=args.classes, workers=args.workers,
                           channels=args.channels, poll_s=args.poll_s,
                           follow_advice=not args.ignore_advice,
                           min_enrolled=args.min_enrolled, timeout_s=args.timeout,
                           deadline_s=args.round_deadline,
                           stack_dir=args.stack_dir, profile_dir=args.profile)
    err.print(f"[bold]tsfl loadtest[/] {args.jobs} job(s) × {args.devices} devices, "
              f"{args.rounds} round(s), {args.workers} workers × {args.channels} channels, "
              f"poll every {args.poll_s:g} s", highlight=False)
    report = run_loadtest(opts)
    print_report(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        err.print(f"report written to {args.out}", highlight=False)
    return 0 if report["counted_once"]["ok"] else 1


def print_report(report: dict[str, Any]) -> None:
    """The load test's headline numbers, then CPU and RSS per process."""
    def ms(p: dict[str, Any]) -> str:
        return "-" if p["p50"] is None else f"{p['p50']:.1f} / {p['p99']:.1f}"

    t = Table("measure", "value")
    t.add_row("devices", f"{report['devices_total']} ({report['registered']} registered)")
    t.add_row("registrations/s", str(report["registrations_per_s"]))
    t.add_row("register p50 / p99 ms", ms(report["register_ms"]))
    t.add_row("task poll p50 / p99 ms", ms(report["poll_ms"]))
    t.add_row("download p50 / p99 ms", ms(report["download_ms"]))
    t.add_row("upload p50 / p99 ms", ms(report["upload_ms"]))
    t.add_row("round s (mean / max)", f"{report['round_s']['mean']} / {report['round_s']['max']}")
    t.add_row("retries", json.dumps(report["retries"]))
    t.add_row("failures", json.dumps(report["failures"]))
    c = report["counted_once"]
    t.add_row("counted once", f"{c['ok']} ({c['accepted_rows']} of {c['expected']})")
    t.add_row("wall s", str(report["wall_s"]))
    out.print(t)
    p = Table("process", "CPU s", "CPU % of a core", "RSS MB", "peak RSS MB")
    for name, u in report["processes"].items():
        p.add_row(name, f"{u['cpu_s']:.1f}", f"{u['cpu_percent']:.0f}", f"{u['rss_mb']:.0f}",
                  f"{u['peak_rss_mb']:.0f}")
    out.print(p)


def add_commands(sub: Any) -> None:
    lt = sub.add_parser("loadtest", help="a fleet load test: N lightweight gRPC devices "
                                         "against a local stack, measured")
    lt.add_argument("--devices", type=int, default=1000, help="devices per job (default 1000)")
    lt.add_argument("--jobs", type=int, default=1, help="concurrent jobs (default 1)")
    lt.add_argument("--rounds", type=int, default=1)
    lt.add_argument("--dim", type=int, default=1000,
                    help="synthetic features (logreg: dim × classes + classes parameters)")
    lt.add_argument("--classes", type=int, default=10)
    lt.add_argument("--workers", type=int, default=2, help="device processes (default 2)")
    lt.add_argument("--channels", type=int, default=16,
                    help="gRPC channels per worker process, shared by its devices")
    lt.add_argument("--poll-s", type=float, default=5.0,
                    help="each device's task-poll interval, jittered ±50%% (default 5)")
    lt.add_argument("--ignore-advice", action="store_true",
                    help="poll every --poll-s even when the coordinator advises a longer "
                         "interval (retry_after_ms), as devices did before it advised one")
    lt.add_argument("--min-enrolled", type=int,
                    help="round 1 starts at this many enrolled devices per job")
    lt.add_argument("--round-deadline", type=float, default=600.0,
                    help="each round's deadline, seconds (default 600)")
    lt.add_argument("--timeout", type=float, default=900.0,
                    help="the whole test's bound, seconds (default 900)")
    lt.add_argument("--stack-dir", help="use the stack running in this directory "
                                        "(default: a fresh one, stopped afterwards)")
    lt.add_argument("--profile", metavar="DIR",
                    help="profile the fresh stack's services (cProfile, DIR/NAME.prof); "
                         "the report lists the coordinator's costliest functions")
    lt.add_argument("--out", help="write the report as JSON here")
    lt.set_defaults(func=cmd_loadtest)
