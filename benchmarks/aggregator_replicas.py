"""Aggregator replicas (hierarchical aggregation): one against two, at 1 MB updates,
next to the broker's own ceiling.

On a local Kafka-wire broker (Tansu) and SQLite, the aggregator replicas run as their own
processes (``tsfl service aggregator``, as ``tsfl stack up --aggregators N`` starts them);
this process plays the coordinator: it publishes N updates of one round (1 MB each, keyed
``job:round:client`` on ``tsfl.updates.direct``) and the round's CLOSING, and reads the
partial aggregates back from ``tsfl.aggregates``.

* ``fold``  — first update published → the last partial aggregate in (the round's whole
              fold: N MB through the broker into the replicas): updates/s and MB/s;
* ``close`` — CLOSING published → the last partial in (round close);
* ``broker`` — the same N messages producer → one plain consumer, no processing (the
              ceiling one consumer reaches; two replicas read in parallel).

Each measurement gets a fresh broker, so no run reads another's backlog. Run:
``python -m benchmarks.aggregator_replicas [--updates N] [--repeats K]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import console, print_table, write_results
from benchmarks.pipeline import broker_floor
from tsfl.bus import TOPICS, topics
from tsfl.bus.kafka import KafkaBus
from tsfl.config import parse_job
from tsfl.core.layout import ParamLayout
from tsfl.core.update import Update
from tsfl.pipeline import events
from tsfl.pipeline.partials import exact_cover
from tsfl.pipeline.routing import update_key
from tsfl.runtime.broker import free_port, start_local_broker
from tsfl.storage.store import Store
from tsfl.wire import encode_update

PARAMS = 262_144  # 1 MiB of float32


async def _job(database: str, job_id: str, layout: ParamLayout) -> Any:
    spec = parse_job({"name": job_id, "seed": 1, "rounds": 1,
                      "clients": {"count": 1000, "per_round": 1000},
                      "model": {"kind": "logreg"}})
    store = await Store.open(database)
    try:
        await store.create_job(job_id, spec.name, spec.model_dump(mode="json"), spec.sha256(),
                               layout.to_json())
        await store.save_checkpoint(job_id, 0, 0, layout.digest,
                                    np.zeros(layout.total_size, np.float32))
    finally:
        await store.close()
    return spec


def _start(kafka: str, database: str, replica: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tsfl.cli.main", "service", "aggregator", "--kafka", kafka,
           "--database", database, "--health", f"127.0.0.1:{free_port()}"]
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "TSFL_REPLICA": f"bench-{replica}"},
                                start_new_session=True)


def _settled(logs: list[Path]) -> bool:
    """Every replica logged its partitions and they split 0..3 exactly."""
    last = []
    for log in logs:
        lines = [ln for ln in log.read_text(errors="replace").splitlines()
                 if ": partitions " in ln]
        if not lines:
            return False
        text = lines[-1].split("partitions ", 1)[1].split(" (")[0]
        last.append(frozenset(int(x) for x in text.strip("[]").split(",") if x.strip()))
    return exact_cover([p for p in last if p], 4) is not None and \
        sum(len(p) for p in last) == 4


def _assigned_at(logs: list[Path]) -> float:
    """When the replicas' final assignment was in place (the latest partitions line)."""
    import datetime
    import json

    latest = 0.0
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if ": partitions " in line and line.startswith("{"):
                ts = json.loads(line)["ts"].replace("Z", "+00:00")
                latest = max(latest, datetime.datetime.fromisoformat(ts).timestamp())
    return latest


async def one_round(replicas: int, n: int, workdir: Path, *, backlog: bool = False
                    ) -> dict[str, float]:
    """One round of ``n`` updates: live (the replicas consume while this process
    publishes) or from a backlog (published before the replicas start: their own fold
    rate, timed from their final assignment)."""
    broker = start_local_broker(log_file=workdir / f"broker-{replicas}.log")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        database = f"sqlite:///{workdir / f'bench-{replicas}-{time.monotonic_ns()}.db'}"
        layout = ParamLayout([("w", (PARAMS,), "float32")])
        job_id = f"bench{replicas}"
        spec = await _job(database, job_id, layout)
        bus = KafkaBus(broker.address)
        await bus.start()
        await bus.create_topics(TOPICS)
        logs = [workdir / f"agg-{replicas}-{i}-{time.monotonic_ns()}.log"
                for i in range(replicas)]
        if not backlog:
            procs = [_start(broker.address, database, i, logs[i]) for i in range(replicas)]
            deadline = time.monotonic() + 120
            while not _settled(logs):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replicas did not settle; see {logs}")
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)
        reader = bus.consumer([topics.AGGREGATES], f"bench-{time.monotonic_ns()}")
        await reader.start()
        rng = np.random.default_rng(0)
        clients = [f"c{i:05d}" for i in range(n)]
        frames = [encode_update(Update(job_id, 1, c, 0, 10,
                                       rng.standard_normal(PARAMS).astype(np.float32), {}),
                                layout) for c in clients]
        t0 = time.perf_counter()
        pending = [await bus.publish_nowait(topics.UPDATES_DIRECT, f,
                                            key=update_key(spec, job_id, 1, c))
                   for f, c in zip(frames, clients, strict=True)]
        await asyncio.gather(*pending)
        t_sent = time.perf_counter()
        await bus.publish(topics.ROUNDS, events.round_event(events.CLOSING, job_id, 1,
                                                            uploaded=clients),
                          key=job_id.encode())
        t_closing = time.perf_counter()
        if backlog:
            procs = [_start(broker.address, database, i, logs[i]) for i in range(replicas)]
        got: list[frozenset[int]] = []
        while exact_cover(got, 4) is None:
            record = await reader.getone(timeout=300)
            if record is None:
                raise RuntimeError("no partial aggregate within 300 s")
            head, _ = events.parse_aggregate(record.value)
            got.append(frozenset(head["partial"]["parts"]))
        t_done, wall_done = time.perf_counter(), time.time()
        await reader.stop()
        await bus.stop()
        if backlog:
            return {"fold_s": wall_done - _assigned_at(logs), "partials": len(got)}
        return {"fold_s": t_done - t0, "close_s": t_done - t_closing,
                "publish_s": t_sent - t0, "partials": len(got)}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.stop()


async def broker_ceiling(n: int, workdir: Path) -> float:
    broker = start_local_broker(log_file=workdir / "broker-floor.log")
    try:
        return await broker_floor(broker.address, n, PARAMS * 4)
    finally:
        broker.stop()


def plot(mb_per_s: dict[str, float], path: Path) -> None:
    """Throughput of each configuration against the broker's own ceiling (MB/s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    labels = list(mb_per_s)
    colors = ["grey"] + ["tab:blue", "tab:orange"] * ((len(labels) - 1) // 2)
    ax.barh(labels, [mb_per_s[k] for k in labels], color=colors[:len(labels)])
    ax.invert_yaxis()
    ax.set(xlabel="MB/s (1 MiB updates, one round)",
           title=f"aggregator replicas on {os.cpu_count()} shared cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    n = args.updates
    results: dict[str, Any] = {"updates": n, "update_bytes": PARAMS * 4, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        floors = [asyncio.run(broker_ceiling(n, workdir)) for _ in range(args.repeats)]
        runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        backlog: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for _ in range(args.repeats):  # alternate, so both see the same machine load
            for replicas in (1, 2):
                runs[replicas].append(asyncio.run(one_round(replicas, n, workdir)))
                backlog[replicas].append(asyncio.run(
                    one_round(replicas, n, workdir, backlog=True)))
    mb = n * PARAMS * 4 / 1e6
    rows = []
    floor = statistics.median(floors)
    rows.append(["broker ceiling (1 consumer)", f"{floor:.2f}", "", f"{n / floor:.0f}",
                 f"{mb / floor:.0f}"])
    med: dict[int, dict[str, float]] = {}
    for replicas, rs in runs.items():
        med[replicas] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        m = med[replicas]
        rows.append([f"{replicas} aggregator replica{'s' if replicas > 1 else ''}",
                     f"{m['fold_s']:.2f}", f"{m['close_s'] * 1000:.0f}",
                     f"{n / m['fold_s']:.0f}", f"{mb / m['fold_s']:.0f}"])
    for replicas, rs in backlog.items():
        fold = statistics.median(r["fold_s"] for r in rs)
        med[10 + replicas] = {"fold_s": fold}
        rows.append([f"{replicas} replica{'s' if replicas > 1 else ''}, from a backlog",
                     f"{fold:.2f}", "", f"{n / fold:.0f}", f"{mb / fold:.0f}"])
    ratio = med[1]["fold_s"] / med[2]["fold_s"]
    backlog_ratio = med[11]["fold_s"] / med[12]["fold_s"]
    print_table(f"{n} updates of 1 MiB, one round (median of {args.repeats})",
                ["", "fold s", "close ms", "updates/s", "MB/s"], rows)
    console.print(f"two replicas / one: {ratio:.2f}× throughput "
                  f"(close: {med[1]['close_s'] / med[2]['close_s']:.2f}×), "
                  f"{backlog_ratio:.2f}× from a backlog; "
                  f"{os.cpu_count()} cores shared by the broker, the producer and the replicas")
    results["runs"] = {str(k): v for k, v in runs.items()}
    results["broker_floor_s"] = floors
    results["backlog"] = {str(k): v for k, v in backlog.items()}
    results["ratio"] = ratio
    results["backlog_ratio"] = backlog_ratio
    write_results("aggregator_replicas", results)
    plot({"broker ceiling (1 consumer)": mb / floor,
          "1 replica, live": mb / med[1]["fold_s"], "2 replicas, live": mb / med[2]["fold_s"],
          "1 replica, backlog": mb / med[11]["fold_s"],
          "2 replicas, backlog": mb / med[12]["fold_s"]},
         Path(__file__).parent / "results" / "aggregator_replicas.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
