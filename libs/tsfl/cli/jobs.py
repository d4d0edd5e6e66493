"""``tsfl job submit|list|status|watch|cancel|rounds|participants|metrics`` and
``tsfl audit JOB``: a job's life and its audit trail, through the admin API."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tsfl.cli.client import (
    add_client_options,
    admin_call,
    admin_stub,
    admin_token,
    coordinator_address,
    rpc_error,
)

err = Console(stderr=True)
out = Console()


def cmd_job(args: argparse.Namespace) -> int:
    from tsfl.config import find_job_file
    from tsfl.runtime.he_spec import with_authority, with_he_key
    from tsfl.v1 import admin_pb2

    args.coordinator = coordinator_address(args)
    if args.target is None and args.action != "list":
        err.print(f"[bold red]error:[/] tsfl job {args.action} needs "
                  f"{'a job spec' if args.action == 'submit' else 'a job id'}")
        return 2
    channel, admin = admin_stub(args.coordinator, admin_token(args))
    try:
        if args.action == "list":
            jobs = admin.ListJobs(admin_pb2.ListJobsRequest(status=(args.target or "").upper()),
                                  timeout=30)
            table = Table("job", "status", "rounds", "accuracy", "devices", "reason")
            for j in jobs.jobs:
                acc = f"{j.test_accuracy:.4f}" if j.HasField("test_accuracy") else ""
                table.add_row(j.job_id, j.status, f"{j.rounds_done}/{j.rounds_total}", acc,
                              str(j.devices), j.reason)
            out.print(table)
        elif args.action == "submit":
            try:
                text = find_job_file(args.target).read_text(encoding="utf-8")
            except OSError as exc:
                err.print(f"[bold red]error:[/] cannot read {args.target}: "
                          f"{getattr(exc, 'strerror', None) or exc}", highlight=False)
                return 2
            try:
                if args.he_keys:
                    text = with_he_key(text, args.he_keys)
                if args.authority:
                    text = with_authority(text, args.authority)
            except ValueError as exc:
                err.print(f"[bold red]error:[/] {exc}", highlight=False)
                return 2
            info = admin.SubmitJob(admin_pb2.SubmitJobRequest(
                spec_yaml=text, enrollment_token=args.token or ""), timeout=120)
            out.print(info.job_id, highlight=False)
            err.print(f"enrollment token: {info.enrollment_token}  (devices: tsfl devices "
                      f"--coordinator {args.coordinator} --job {info.job_id} --token "
                      f"{info.enrollment_token} --count N)", highlight=False)
        elif args.action == "status":
            info = admin.GetJob(admin_pb2.JobRef(job_id=args.target), timeout=10)
            out.print(json.dumps({"job_id": info.job_id, "name": info.name,
                                  "status": info.status, "reason": info.reason,
                                  "rounds_done": info.rounds_done,
                                  "rounds_total": info.rounds_total,
                                  "model_version": info.model_version,
                                  "devices": info.devices,
                                  "test_accuracy": info.test_accuracy
                                  if info.HasField("test_accuracy") else None}, indent=2))
        elif args.action == "cancel":
            info = admin.CancelJob(admin_pb2.JobRef(job_id=args.target), timeout=30)
            out.print(f"{info.job_id}: {info.status}", highlight=False)
        elif args.action == "rounds":
            rounds = admin.ListRounds(admin_pb2.JobRef(job_id=args.target), timeout=30)
            table = Table("round", "state", "accepted", "rejected", "cohort", "model",
                          "accuracy", "loss", "ε", "reason")
            for r in rounds.rounds:
                m = round_metrics(r)
                table.add_row(str(r.round), r.state, str(r.accepted), str(r.rejected),
                              str(r.cohort_size), str(r.model_version or ""),
                              _num(m["test_accuracy"]), _num(m["test_loss"]),
                              _num(m["epsilon"]), r.reason)
            out.print(table)
        elif args.action == "metrics":
            from tsfl.runtime.report import plot_curves, write_json

            rounds = admin.ListRounds(admin_pb2.JobRef(job_id=args.target), timeout=30)
            metrics = [round_metrics(r) for r in rounds.rounds if r.state == "PUBLISHED"]
            directory = Path(args.out or f"runs/{args.target}")
            directory.mkdir(parents=True, exist_ok=True)
            write_json(directory / "metrics.json", metrics)
            plot_curves(metrics, directory / "curves.png", args.target)
            err.print(f"{len(metrics)} rounds -> {directory}/metrics.json, curves.png",
                      highlight=False)
        elif args.action == "participants":
            parts = admin.ListParticipants(admin_pb2.ParticipantsRequest(
                job_id=args.target, round=args.round or 0), timeout=30)
            table = Table("round", "device", "status", "examples", "bytes up", "reason")
            for p in parts.participants:
                table.add_row(str(p.round), p.client_id, p.status, str(p.num_examples),
                              str(p.bytes_up), p.reason)
            out.print(table)
        else:  # watch
            info = admin.GetJob(admin_pb2.JobRef(job_id=args.target), timeout=10)
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                          TextColumn("round {task.completed}/{task.total} {task.fields[st]}"),
                          TimeElapsedColumn(), console=err) as progress:
                bar = progress.add_task(info.job_id, total=info.rounds_total, st="")
                final = "RUNNING"
                for r in admin.WatchJob(admin_pb2.JobRef(job_id=args.target)):
                    if r.round == 0:
                        final = r.job_status
                        break
                    done = r.round if r.state in ("PUBLISHED", "FAILED") else r.round - 1
                    line = round_line(r)
                    progress.update(bar, completed=done, st=line or r.state)
                    if line and (r.state == "FAILED" or r.HasField("test_accuracy")
                                 or r.HasField("train_loss")):
                        progress.console.print(f"round {r.round}: {line}", highlight=False)
            out.print(f"{args.target}: {final}", highlight=False)
            return 0 if final == "COMPLETED" else 1
    except grpc.RpcError as exc:
        return rpc_error(exc)
    finally:
        channel.close()
    return 0


def round_metrics(r: Any) -> dict[str, Any]:
    """A RoundInfo as a metrics.json row (the keys ``tsfl run`` writes)."""
    def opt(name: str) -> float | None:
        return getattr(r, name) if r.HasField(name) else None

    return {"round": r.round, "model_version": r.model_version,
            "test_accuracy": opt("test_accuracy"), "test_loss": opt("test_loss"),
            "train_loss": opt("train_loss"), "epsilon": opt("epsilon"),
            "accepted": r.accepted, "rejected": r.rejected, "cohort": r.cohort_size,
            "bytes_up": r.bytes_up, "bytes_down": r.bytes_down}


def round_line(r: Any) -> str:
    """One round, for a person: state, accuracy, loss, ε (what is known)."""
    m = round_metrics(r)
    parts = [r.state]
    if m["test_accuracy"] is not None:
        parts.append(f"acc {m['test_accuracy']:.4f}")
    if m["test_loss"] is not None:
        parts.append(f"loss {m['test_loss']:.4f}")
    elif m["train_loss"] is not None:
        parts.append(f"train loss {m['train_loss']:.4f}")
    if m["epsilon"] is not None:
        parts.append(f"ε {m['epsilon']:.3g}")
    parts.append(f"{r.accepted}/{r.cohort_size} accepted")
    if r.reason:
        parts.append(f"({r.reason})")
    return "  ".join(parts)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def cmd_audit(args: argparse.Namespace) -> int:
    from tsfl.v1 import admin_pb2

    args.coordinator = coordinator_address(args)
    trail, failed = admin_call(args.coordinator, "QueryAudit",
                               admin_pb2.JobRef(job_id=args.job), 30, admin_token(args))
    if failed is not None:
        return failed
    for e in trail.events:
        print(json.dumps({"seq": e.seq, "at": e.created_at, "kind": e.kind, "actor": e.actor,
                          "payload": json.loads(e.payload_json), "hash": e.hash[:16]}))
    verdict = "intact" if trail.chain_valid else f"BROKEN ({trail.chain_detail})"
    err.print(f"{len(trail.events)} events; hash chain {verdict}")
    return 0 if trail.chain_valid else 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    """``tsfl job``."""
    job = sub.add_parser("job", help="submit, inspect, watch or cancel jobs")
    job.add_argument("action", choices=["submit", "list", "status", "watch", "cancel",
                                        "rounds", "participants", "metrics"])
    job.add_argument("target", nargs="?", help="submit: JOB.yaml or a bundled example's "
                                               "name (digits-dp); list: a status filter; "
                                               "else the job id")
    job.add_argument("--round", type=int, help="participants: only this round")
    job.add_argument("--out", help="metrics: directory for metrics.json and curves.png "
                                   "(default runs/JOB_ID)")
    job.add_argument("--token", help="submit: the enrollment token devices will present")
    job.add_argument("--he-keys", metavar="DIR", help="submit: the HE key set's public part "
                     "(its key id goes into crypto.he.key_id)")
    job.add_argument("--authority", metavar="CA.pub",
                     help="submit: the identity authority (public key, hex or .pub file) "
                          "certifying the silos of a threshold-HE job (crypto.he.authority)")
    job.set_defaults(func=cmd_job)
    add_client_options(job)


def add_audit_command(sub: argparse._SubParsersAction) -> None:
    """``tsfl audit JOB``."""
    audit = sub.add_parser("audit", help="print a job's audit trail and check its hash chain")
    audit.add_argument("job")
    audit.set_defaults(func=cmd_audit)
    add_client_options(audit)
