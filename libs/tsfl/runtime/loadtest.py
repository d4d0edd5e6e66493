"""A fleet load test of the distributed stack: N lightweight devices (real gRPC, real
frames) against a local stack, measured.

:func:`run_loadtest` starts a stack (``tsfl stack up`` in a temporary directory, or uses
a running one), submits ``jobs`` logistic-regression jobs on synthetic data (``dim`` ×
``classes`` + ``classes`` parameters; every device of a job in every round's cohort),
spreads the devices over ``workers`` processes (:mod:`tsfl.runtime.fleet_load`, each
with a few shared gRPC channels), samples CPU and RSS of the broker, every service and
every worker from ``/proc`` meanwhile, and checks in the store that every (round,
client) was counted exactly once. Everything is bounded by ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

from tsfl.runtime import stack
from tsfl.runtime.broker import free_port
from tsfl.runtime.proc_stats import PROFILE_ENV, ProcSampler

#: jobs one admin token may own at once (the coordinator's default --max-jobs-per-submitter)
JOBS_PER_OWNER = 20


@dataclass
class LoadTestOptions:
    """One load test. ``devices`` is per job; ``min_enrolled`` (per job) lets round 1
    start before every device enrolled (default: all of them)."""

    devices: int = 1000
    jobs: int = 1
    rounds: int = 1
    dim: int = 1000
    classes: int = 10
    workers: int = 2
    channels: int = 16  # per worker: fewer made calls end CANCELLED at 10k (README)
    poll_s: float = 5.0
    follow_advice: bool = True  # devices wait as long as the coordinator advises
    min_enrolled: int | None = None
    register_concurrency: int = 64
    deadline_s: float = 600.0  # a round's deadline
    timeout_s: float = 900.0   # the whole test
    stack_dir: str | None = None  # a running stack to use (else a fresh one, stopped after)
    seed: int = 0
    profile_dir: str | None = None  # a fresh stack's services write cProfile stats here


def job_spec(opts: LoadTestOptions, index: int = 0) -> dict[str, Any]:
    """The load test's job: logreg on Synthetic-IID, every device every round, no server
    or device evaluation (the devices do not train)."""
    clients: dict[str, Any] = {"count": opts.devices, "per_round": opts.devices}
    if opts.min_enrolled is not None:
        clients["min_enrolled"] = opts.min_enrolled
    return {"name": f"loadtest-{index}", "seed": opts.seed + index, "rounds": opts.rounds,
            "data": {"dataset": "synthetic",
                     "synthetic": {"iid": True, "dim": opts.dim, "classes": opts.classes}},
            "clients": clients, "model": {"kind": "logreg"},
            "round": {"deadline_s": opts.deadline_s},
            "evaluation": {"server": False, "federated": "off"}}


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """count, p50, p99 and max of latencies in ms."""
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    arr = np.asarray(values)
    return {"count": int(arr.size), "p50": round(float(np.percentile(arr, 50)), 2),
            "p99": round(float(np.percentile(arr, 99)), 2), "max": round(float(arr.max()), 2)}


def _submit(address: str, token: str, spec: dict[str, Any]) -> str:
    from tsfl.v1 import admin_pb2, admin_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        info = admin_pb2_grpc.AdminServiceStub(ch).SubmitJob(
            admin_pb2.SubmitJobRequest(spec_yaml=yaml.safe_dump(spec),
                                       enrollment_token="loadtest"),
            timeout=120, metadata=(("authorization", f"Bearer {token}"),))
    return str(info.job_id)


def _job_status(address: str, token: str, job_id: str) -> str:
    from tsfl.v1 import admin_pb2, admin_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        return str(admin_pb2_grpc.AdminServiceStub(ch).GetJob(
            admin_pb2.JobRef(job_id=job_id), timeout=30,
            metadata=(("authorization", f"Bearer {token}"),)).status)


def _when(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def _store_view(database: str, job_ids: list[str]) -> dict[str, Any]:
    from tsfl.storage import Store

    store = await Store.open(database)
    try:
        return {j: {"rounds": await store.list_rounds(j),
                    "participants": await store.list_participants(j)} for j in job_ids}
    finally:
        await store.close()


def check_counted_once(view: dict[str, Any], accepted: list[tuple[str, int, str]],
                       opts: LoadTestOptions) -> dict[str, Any]:
    """Every (job, round, client) the devices were told was accepted is one accepted
    participant row, no other row is accepted, each round's ``accepted`` equals its rows,
    and every round published with its whole cohort (``devices`` a round, or the round's
    cohort when ``min_enrolled`` let it start with fewer)."""
    rows = [(j, p["round"], p["client_id"]) for j, v in view.items()
            for p in v["participants"] if p["status"] == "accepted"]
    told = set(map(tuple, accepted))
    per_round_rows: dict[tuple[str, int], int] = {}
    for j, r, _ in rows:
        per_round_rows[(j, r)] = per_round_rows.get((j, r), 0) + 1
    rounds = [(j, r) for j, v in view.items() for r in v["rounds"]]
    states = {r["state"] for _, r in rounds}
    mismatched = [f"{j}:{r['number']}" for j, r in rounds
                  if r["accepted"] != per_round_rows.get((j, r["number"]), 0)]
    expected = (opts.jobs * opts.rounds * opts.devices if opts.min_enrolled is None
                else sum(r["cohort_size"] for _, r in rounds))
    ok = (len(rows) == len(set(rows)) == len(told) == expected and set(rows) == told
          and not mismatched and states == {"PUBLISHED"} and len(rounds) == opts.jobs *
          opts.rounds)
    return {"ok": ok, "expected": expected, "accepted_rows": len(rows),
            "distinct_rows": len(set(rows)), "devices_told_accepted": len(told),
            "told_not_stored": len(told - set(rows)), "stored_not_told": len(set(rows) - told),
            "round_states": sorted(states), "rounds_count_mismatch": mismatched}


def _round_times(view: dict[str, Any], reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each round's time: in the store (opened → last update of its row) and as the
    devices saw it (first task seen → last upload answered)."""
    seen: dict[str, list[float]] = {}
    for rep in reports:
        for key, (first, last) in rep["rounds"].items():
            cur = seen.setdefault(key, [math.inf, 0.0])
            cur[0], cur[1] = min(cur[0], first), max(cur[1], last)
    out = []
    for job_id, v in view.items():
        for r in v["rounds"]:
            dev = seen.get(f"{job_id}:{r['number']}")
            out.append({"job": job_id, "round": r["number"], "state": r["state"],
                        "accepted": r["accepted"],
                        "store_s": round(_when(r["updated_at"]) - _when(r["opened_at"]), 2),
                        "devices_s": round(dev[1] - dev[0], 2) if dev else None})
    return out


def _spawn_workers(opts: LoadTestOptions, address: str, devices: list[tuple[str, str, str]],
                   workdir: Path) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """The worker processes, each with its share of the devices and its report file."""
    procs = []
    n = max(1, min(opts.workers, len(devices)))
    for w in range(n):
        cfg = {"address": address, "devices": devices[w::n], "channels": opts.channels,
               "poll_s": opts.poll_s, "follow_advice": opts.follow_advice,
               "register_concurrency": opts.register_concurrency,
               "deadline_s": opts.timeout_s, "seed": opts.seed * 1000 + w}
        config, report = workdir / f"worker-{w}.json", workdir / f"worker-{w}.report.json"
        config.write_text(json.dumps(cfg))
        proc = subprocess.Popen([sys.executable, "-m", "tsfl.runtime.fleet_load",
                                 str(config), str(report)], stdin=subprocess.DEVNULL)
        procs.append((proc, report))
    return procs


def _collect(procs: list[tuple[subprocess.Popen[bytes], Path]], timeout_s: float
             ) -> list[dict[str, Any]]:
    """Each worker's report (``{"error": ...}`` for one that failed or overran)."""
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    for proc, path in procs:
        try:
            rc = proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -9
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            reports.append({"error": f"worker exited {rc} without a report"})
    return reports


def _merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    def cat(name: str) -> list[float]:
        return [x for r in reports for x in r.get(name, [])]

    def add(name: str) -> dict[str, int]:
        total: dict[str, int] = {}
        for r in reports:
            for k, v in r.get(name, {}).items():
                total[k] = total.get(k, 0) + v
        return total

    firsts = [r["register_first_s"] for r in reports if r.get("register_first_s")]
    lasts = [r["register_last_s"] for r in reports if r.get("register_last_s")]
    registered = sum(r.get("registered", 0) for r in reports)
    span = (max(lasts) - min(firsts)) if firsts and lasts else None
    return {"registered": registered, "registration_s": round(span, 2) if span else None,
            "registrations_per_s": round(registered / span, 1) if span else None,
            "register_ms": percentiles(cat("register_ms")),
            "poll_ms": percentiles(cat("poll_ms")),
            "download_ms": percentiles(cat("download_ms")),
            "upload_ms": percentiles(cat("upload_ms")),
            "retries": add("retries"), "failures": add("failures"), "refused": add("refused"),
            "retry_details": {k: v for r in reports for k, v in r.get("retry_details", {}).items()},
            "finished_devices": sum(r.get("finished", 0) for r in reports),
            "workers_timed_out": sum(1 for r in reports if r.get("timed_out") or "error" in r),
            "bytes_down": sum(r.get("bytes_down", 0) for r in reports),
            "bytes_up": sum(r.get("bytes_up", 0) for r in reports)}


def run_loadtest(opts: LoadTestOptions) -> dict[str, Any]:
    """Run one load test; returns its report (see :mod:`tsfl.runtime.loadtest`)."""
    tmp = None
    if opts.stack_dir and (Path(opts.stack_dir) / "stack.json").exists():
        directory, own = Path(opts.stack_dir), False
        state = stack.StackState.load(directory)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="tsfl-loadtest-")
        directory, own = Path(opts.stack_dir or tmp.name) / "stack", True
        saved = os.environ.get(PROFILE_ENV)
        if opts.profile_dir:  # the services inherit it
            os.environ[PROFILE_ENV] = str(Path(opts.profile_dir).resolve())
        try:
            state = stack.up(directory, kafka=None, database=None, grpc_port=free_port())
        finally:
            os.environ.pop(PROFILE_ENV, None)
            if saved is not None:
                os.environ[PROFILE_ENV] = saved
    try:
        report = _run(opts, state)
    finally:
        if own:
            stack.down(directory, timeout=60)
        if tmp is not None:
            tmp.cleanup()
    if own and opts.profile_dir:
        report["profile"] = top_functions(Path(opts.profile_dir) / "coordinator.prof")
    return report


def top_functions(path: Path, n: int = 25) -> list[dict[str, Any]]:
    """The ``n`` functions of a cProfile dump with the most time of their own."""
    import pstats

    if not path.exists():
        return []
    stats = pstats.Stats(str(path))
    total = max(stats.total_tt, 1e-9)  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (_, calls, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(file).name}:{line}({func})", "calls": calls,
                     "own_s": round(tt, 3), "own_share": round(tt / total, 3),
                     "cumulative_s": round(ct, 3)})
    return sorted(rows, key=lambda r: -r["own_s"])[:n]


def _run(opts: LoadTestOptions, state: stack.StackState) -> dict[str, Any]:
    assert state.admin_token, "the stack has no admin token"
    owners = [state.admin_token] + [
        stack.issue_admin_token(state.database, f"loadtest-{k}", "operator")
        for k in range(1, math.ceil(opts.jobs / JOBS_PER_OWNER))]
    sampler = ProcSampler({"broker": state.broker_pid or 0,
                           **{n: e["pid"] for n, e in state.services.items()}}).start()
    t0 = time.time()
    job_ids = [_submit(state.grpc, owners[i // JOBS_PER_OWNER], job_spec(opts, i))
               for i in range(opts.jobs)]
    submit_s = time.time() - t0
    devices = [(job, "loadtest", f"dev-{i}-{k:05d}") for i, job in enumerate(job_ids)
               for k in range(opts.devices)]
    with tempfile.TemporaryDirectory(prefix="tsfl-fleet-") as workdir:
        procs = _spawn_workers(opts, state.grpc, devices, Path(workdir))
        for w, (proc, _) in enumerate(procs):
            sampler.add(f"worker-{w}", proc.pid)
        reports = _collect(procs, opts.timeout_s + 30)
    wall_s = time.time() - t0
    usage = sampler.stop()
    statuses = {j: _job_status(state.grpc, owners[i // JOBS_PER_OWNER], j)
                for i, j in enumerate(job_ids)}
    view = asyncio.run(_store_view(state.database, job_ids))
    accepted = [tuple(a) for r in reports for a in r.get("accepted", [])]
    merged = _merge(reports)
    rounds = _round_times(view, reports)
    per_job_round = [r["store_s"] for r in rounds]
    return {"options": asdict(opts), "parameters": opts.dim * opts.classes + opts.classes,
            "devices_total": len(devices), "submit_s": round(submit_s, 2),
            "wall_s": round(wall_s, 2), **merged,
            "poll_rate_per_s": round(len(devices) / opts.poll_s, 1),
            "round_s": {"mean": round(float(np.mean(per_job_round)), 2) if rounds else None,
                        "max": round(float(np.max(per_job_round)), 2) if rounds else None},
            "rounds": rounds if opts.jobs <= 10 else rounds[:10],
            "job_status": sorted(set(statuses.values())),
            "counted_once": check_counted_once(view, accepted, opts),
            "processes": {n: u.as_dict() for n, u in usage.items()},
            "window_s": round(sampler.elapsed_s, 1)}
