"""``tsfl``: run federated jobs.

    tsfl run [JOB.yaml] [--out DIR] [--seed N] [--rounds N]     embedded, one process
    tsfl validate JOB.yaml
    tsfl stack up|status|down                                  the local distributed stack
    tsfl service NAME --kafka HOST:PORT --database URL         one service
    tsfl job submit|status|watch|cancel ...                    admin
    tsfl devices --job ID --token T --count N                  simulated devices over gRPC
    tsfl audit JOB_ID
    tsfl audit privacy JOB.yaml [--canaries M] [--out DIR] [--seed N]   empirical ε bound
    tsfl psi JOB.yaml | --party NAME=FILE ...                   private set intersection
    tsfl export JOB [--version N] --format safetensors|onnx|torchscript --out DIR
    tsfl vertical party|tables ...                             a vertical job's party
    tsfl loadtest [--devices N] [--jobs J] [--rounds R]        a fleet against a stack
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tsfl import __version__
from tsfl.config import ConfigError, JobSpec, bundled_example, load_job

err = Console(stderr=True)
out = Console()


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def _load(path: str | None, overrides: dict[str, Any]) -> JobSpec:
    job_path = Path(path) if path else bundled_example()
    return load_job(job_path, overrides)


def _report_config_error(exc: ConfigError) -> int:
    err.print(f"[bold red]invalid job spec[/] {exc.source}:", highlight=False)
    for line in exc.problems:
        print(f"  {line}", file=sys.stderr)
    return 2


def cmd_run(args: argparse.Namespace) -> int:
    from tsfl.he import HeError, read_secret
    from tsfl.runtime.embedded import run_embedded
    from tsfl.runtime.report import summarize, write_outputs
    from tsfl.sim.datasets import DatasetError
    from tsfl.sim.models import ModelError
    from tsfl.sim.partition import PartitionError

    overrides: dict[str, Any] = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.rounds is not None:
        overrides["rounds"] = args.rounds
    try:
        spec = _load(args.job, overrides)
    except ConfigError as exc:
        return _report_config_error(exc)
    out_dir = Path(args.out) if args.out else Path("runs") / spec.name
    who = (f"vertical {spec.vertical.model}, {len(spec.vertical.parties)} parties"
           if spec.vertical else f"{spec.clients.count} clients, "
           f"{spec.clients.per_round}/round, {spec.strategy.name}")
    err.print(f"[bold]tsfl run[/] {spec.name}: {who}, seed {spec.seed} -> {out_dir}",
              highlight=False)

    progress = Progress(
        TextColumn("[bold]round {task.completed}/{task.total}"), BarColumn(),
        TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  "
                   "up {task.fields[up]}  down {task.fields[down]}"),
        TimeElapsedColumn(), console=err, disable=args.quiet, transient=False)
    totals = {"up": 0, "down": 0}

    with progress:
        bar = progress.add_task("run", total=spec.rounds, loss="-", acc="-", up="0 B",
                                down="0 B")

        def on_round(m: dict[str, Any]) -> None:
            totals["up"] += m["bytes_up"]
            totals["down"] += m["bytes_down"]
            fields: dict[str, Any] = {"up": _fmt_bytes(totals["up"]),
                                      "down": _fmt_bytes(totals["down"])}
            if m["test_accuracy"] is not None:
                fields["loss"] = f"{m['test_loss']:.4f}"
                fields["acc"] = f"{m['test_accuracy']:.4f}"
            progress.update(bar, completed=m["round"], **fields)

        try:
            he_keys = read_secret(args.he_keys) if args.he_keys else None
            result = asyncio.run(run_embedded(spec, out_dir, on_round=on_round,
                                              he_keys=he_keys))
        except (DatasetError, ModelError, PartitionError, HeError) as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            return 2
        except ConfigError as exc:
            return _report_config_error(exc)
    spec = result.spec
    summary = summarize(spec, result.metrics, wall_s=result.wall_s, job_id=result.job_id,
                        status=result.status, reason=result.reason, ledger=result.ledger,
                        robustness=result.robustness, crypto=result.crypto)
    if result.vertical is not None:
        summary["vertical"] = result.vertical
    write_outputs(out_dir, spec, result.metrics, summary)
    acc = summary["final_test_accuracy"]
    out.print(f"final test accuracy: {acc:.4f}" if acc is not None else "final test accuracy: -",
              highlight=False)
    err.print(f"{summary['rounds']} rounds in {result.wall_s:.1f} s, status {result.status}"
              f"{' (' + result.reason + ')' if result.reason else ''}; outputs in {out_dir}/ "
              "(metrics.json, summary.json, curves.png, tsfl.db)", highlight=False)
    if summary.get("privacy"):
        p = summary["privacy"]
        if p["mode"] != "none":
            err.print(f"privacy: ε={p['epsilon']:.3f} at δ={p['delta']:g} ({p['mechanism']}, "
                      f"{p['accountant']}, {p['rounds']} rounds; privacy.png)",
                      highlight=False)
        if p.get("record_level"):
            r = p["record_level"]
            err.print(f"record-level DP-SGD: ε ≤ {r['epsilon_max']:.3f} at δ={r['delta']:g} "
                      "for every client (privacy.png)", highlight=False)
        guarantee = p.get("guarantee") or (p.get("record_level") or {}).get("guarantee")
        if guarantee and guarantee.startswith("reproducible"):
            err.print(f"[bold red]warning:[/] {guarantee}", highlight=False)
    if summary.get("robustness"):
        r = summary["robustness"]

        def pct(v: float | None) -> str:
            return f"{100 * v:.1f}%" if v is not None else "-"

        err.print(f"robustness: {r['aggregator']} against {r['attack']} "
                  f"({100 * r['fraction']:.0f}% malicious): detection TPR {pct(r['tpr'])}, "
                  f"FPR {pct(r['fpr'])}" + (f", backdoor success {pct(r['backdoor_success_rate'])}"
                                            if r["backdoor_success_rate"] is not None else ""),
                  highlight=False)
    return 0 if result.status == "COMPLETED" else 1


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        spec = _load(args.job, {})
    except ConfigError as exc:
        return _report_config_error(exc)
    out.print(f"ok: {spec.name} (sha256 {spec.sha256()[:12]})", highlight=False)
    return 0


def cmd_audit_privacy(args: argparse.Namespace) -> int:
    """``tsfl audit privacy JOB.yaml``: run the job once with canary clients and report the
    empirical ε lower bound beside the accounted ε (:mod:`tsfl.runtime.canaries`)."""
    from tsfl.runtime.audit_report import format_line, write_audit_outputs
    from tsfl.runtime.canaries import AuditError, check_auditable, run_privacy_audit
    from tsfl.sim.datasets import DatasetError
    from tsfl.sim.models import ModelError
    from tsfl.sim.partition import PartitionError

    overrides: dict[str, Any] = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    try:
        spec = _load(args.job, overrides)
    except ConfigError as exc:
        return _report_config_error(exc)
    if args.canaries < 2:
        err.print("[bold red]error:[/] --canaries must be at least 2", highlight=False)
        return 2
    try:
        check_auditable(spec)
    except AuditError as exc:
        err.print(f"[bold red]error:[/] cannot audit {spec.name}: {exc}", highlight=False)
        return 2
    out_dir = Path(args.out) if args.out else Path("runs") / f"{spec.name}-privacy-audit"
    err.print(f"[bold]tsfl audit privacy[/] {spec.name}: {spec.privacy.mode} DP, "
              f"{spec.clients.count} clients + {args.canaries} canaries, {spec.rounds} rounds, "
              f"seed {spec.seed} -> {out_dir}", highlight=False)
    progress = Progress(
        TextColumn("[bold]round {task.completed}/{task.total}"), BarColumn(),
        TextColumn("acc {task.fields[acc]}  ε {task.fields[eps]}"),
        TimeElapsedColumn(), console=err, disable=args.quiet, transient=False)
    with progress:
        bar = progress.add_task("audit", total=spec.rounds, acc="-", eps="-")

        def on_round(m: dict[str, Any]) -> None:
            fields: dict[str, Any] = {}
            if m.get("test_accuracy") is not None:
                fields["acc"] = f"{m['test_accuracy']:.4f}"
            if m.get("epsilon") is not None:
                fields["eps"] = f"{m['epsilon']:.3f}"
            progress.update(bar, completed=m["round"], **fields)

        try:
            result = asyncio.run(run_privacy_audit(spec, out_dir, canaries=args.canaries,
                                                   on_round=on_round))
        except AuditError as exc:
            err.print(f"[bold red]error:[/] cannot audit {spec.name}: {exc}", highlight=False)
            return 2
        except (DatasetError, ModelError, PartitionError) as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            return 2
        except ConfigError as exc:
            return _report_config_error(exc)
    json_path, png_path = write_audit_outputs(out_dir, result)
    out.print(format_line(result), highlight=False)
    for note in result.notes:
        err.print(f"note: {note}", highlight=False)
    err.print(f"{len(result.run.metrics)} rounds, status {result.run.status}, "
              f"{result.wall_s:.1f} s; {json_path}, {png_path}", highlight=False)
    return 0


def build_audit_privacy_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="tsfl audit privacy",
        description="Empirical privacy audit (Steinke, Nasr & Jagielski 2023, one run): the "
                    "job runs once embedded with canary clients, each included with "
                    "probability 1/2; a membership test on what the DP mode's adversary sees "
                    "gives a 95% lower bound on ε, printed beside the accounted ε.")
    ap.add_argument("job", help="job spec (YAML) with privacy.mode central or local")
    ap.add_argument("--canaries", type=int, default=1000, metavar="M",
                    help="canary clients added to the population (default 1000)")
    ap.add_argument("--out", help="output directory for privacy_audit.json/.png and the "
                                  "run's tsfl.db (default: runs/<job name>-privacy-audit)")
    ap.add_argument("--seed", type=int, help="override the job's seed (it also seeds the "
                                             "canaries' directions and inclusion)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.set_defaults(func=cmd_audit_privacy)
    return ap


def cmd_bench_robustness(args: argparse.Namespace) -> int:
    from tsfl.runtime.robustness_bench import run_bench

    out_dir = Path(args.out)
    run_bench(out_dir, quick=args.quick, rounds=args.rounds)
    out.print(f"wrote {out_dir}/robustness.md, robustness.json, robustness.png",
              highlight=False)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The model kinds a spec may name: built-in kinds and installed builders."""
    from tsfl.sim.models import BUILDER_GROUP, model_builders

    out.print("built-in (model.kind): mlp, cnn, logreg", highlight=False)
    builders = model_builders()
    out.print(f"installed builders (model.kind: custom, model.builder: NAME; entry points "
              f"of group {BUILDER_GROUP}):", highlight=False)
    for name, ep in sorted(builders.items()):
        out.print(f"  {name}  ({ep.value})", highlight=False)
    if not builders:
        out.print("  none", highlight=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsfl", description="TrustStram FL")
    parser.add_argument("--version", action="version", version=f"tsfl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job embedded in this process")
    run.add_argument("job", nargs="?", help="job spec (YAML); default: the bundled example")
    run.add_argument("--out", help="output directory (default: runs/<job name>)")
    run.add_argument("--seed", type=int, help="override the job's seed")
    run.add_argument("--rounds", type=int, help="override the number of rounds")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--he-keys", metavar="DIR", help="the shared HE key set of a crypto.mode "
                     "he job with keying shared (tsfl keys init); default: a fresh key per run "
                     "(threshold keying: the silos' ceremony), in OUT/keys")
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="check a job spec and exit")
    val.add_argument("job", nargs="?")
    val.set_defaults(func=cmd_validate)

    models = sub.add_parser("models", help="model kinds and installed model builders a "
                                           "spec may name")
    models.set_defaults(func=cmd_models)

    bench = sub.add_parser("bench", help="built-in benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    rob = bench_sub.add_parser("robustness", help="aggregator × attack on digits: accuracy, "
                                                  "detection TPR/FPR, backdoor success")
    rob.add_argument("--out", default="benchmarks/results",
                     help="directory for robustness.md/.json/.png")
    rob.add_argument("--quick", action="store_true",
                     help="3 rules × 3 attacks, IID, 5 rounds (what CI runs)")
    rob.add_argument("--rounds", type=int, help="override the example's 30 rounds")
    rob.set_defaults(func=cmd_bench_robustness)

    from tsfl.cli import admin, devices, export, jobs, keys, loadtest, psi, service, stack, vertical

    for add in (service.add_commands, stack.add_commands, devices.add_commands,
                jobs.add_commands, keys.add_commands, jobs.add_audit_command,
                admin.add_commands, export.add_commands, loadtest.add_commands,
                psi.add_commands, vertical.add_commands):
        add(sub)
    audit = sub.choices.get("audit")
    if audit is not None:  # `tsfl audit privacy ...` is parsed by its own parser (main)
        audit.usage = ("tsfl audit JOB_ID [--coordinator ADDR]\n"
                       "       tsfl audit privacy JOB.yaml [--canaries M] [--out DIR] "
                       "[--seed N] [--quiet]")
        audit.epilog = ("`tsfl audit privacy JOB.yaml` runs the job embedded with canaries "
                        "and bounds its ε from below (tsfl audit privacy --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["audit", "privacy"]:  # not a job id: the privacy audit
        args = build_audit_privacy_parser().parse_args(argv[2:])
    else:
        args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
