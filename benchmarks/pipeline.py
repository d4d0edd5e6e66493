"""The distributed pipeline's throughput and round-close latency, against the broker's own.

On a local Kafka-wire broker (Tansu, in-memory) and SQLite, all six roles in this process
over the Kafka bus:

* ``broker``   — aiokafka producer → consumer on one topic, no processing: the ceiling;
* ``pipeline`` — N updates, uploaded by 16 concurrent devices, through coordinator
                 ingest (full validation) → tsfl.updates.clipped → byzantine verdicts →
                 aggregator fold, timed from the first upload to the last update folded.
                 (The job has no central DP, so updates skip the privacy stage's hop;
                 the verdicts are small messages of their own);
* round close  — last update in → new global model released on tsfl.models and PUBLISHED
                 persisted (finalize, checkpoint, aggregate, release, persist).

Run: ``python -m benchmarks.pipeline [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from benchmarks._common import console, print_table, write_results
from tsfl.bus import TOPICS
from tsfl.bus.kafka import KafkaBus
from tsfl.config import parse_job
from tsfl.core.layout import ParamLayout
from tsfl.core.update import Update
from tsfl.pipeline.roles import LocalPipeline
from tsfl.runtime.broker import start_local_broker
from tsfl.storage.store import Store
from tsfl.wire import encode_update


async def broker_floor(address: str, n: int, size: int) -> float:
    """Seconds to move n messages of size bytes producer → consumer (no processing)."""
    topic = f"bench.floor.{size}.{time.monotonic_ns()}"
    bus = KafkaBus(address)
    await bus.start()
    await bus.create_topics({topic: 4})
    await bus.stop()
    max_bytes = size + 1024**2
    producer = AIOKafkaProducer(bootstrap_servers=address, acks="all",
                                enable_idempotence=False, max_request_size=max_bytes)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=address, group_id=topic,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                max_partition_fetch_bytes=max_bytes,
                                fetch_max_bytes=max_bytes * 4)
    await producer.start()
    await consumer.start()
    payload = np.random.default_rng(0).bytes(size)
    await producer.send_and_wait(topic, b"warm", key=b"w")
    await consumer.getone()
    t0 = time.perf_counter()

    async def produce() -> None:
        for i in range(n):
            await producer.send(topic, payload, key=str(i).encode())
        await producer.flush()

    task = asyncio.create_task(produce())
    got = 0
    while got < n:
        batch = await consumer.getmany(timeout_ms=1000)
        got += sum(len(v) for v in batch.values())
    elapsed = time.perf_counter() - t0
    await task
    await consumer.stop()
    await producer.stop()
    return elapsed


async def pipeline_run(address: str, n: int, params: int, tmp: Path,
                       concurrency: int = 16) -> dict[str, float]:
    bus = KafkaBus(address)
    await bus.start()
    await bus.create_topics(TOPICS)
    store = await Store.open(f"sqlite:///{tmp / f'bench-{n}-{params}.db'}")
    pipeline = LocalPipeline(bus, store)
    await pipeline.start()
    coord = pipeline.coordinator
    layout = ParamLayout([("w", (params,), "float32")])
    spec = parse_job({"name": "bench", "clients": {"count": n, "per_round": n},
                      "round": {"deadline_s": 3600}})
    job = f"bench-{n}-{params}-{time.monotonic_ns()}"
    await coord.submit_job(job, spec, layout, np.zeros(params, np.float32))
    clients = [f"c{i:05d}" for i in range(n)]
    for c in clients:
        await coord.register_device(job, c, "t")
    await coord.open_round(job)
    rng = np.random.default_rng(1)
    deltas = [rng.random(params, dtype=np.float32) for _ in range(min(n, 20))]
    frames = [encode_update(Update(job, 1, c, 0, 10, deltas[i % len(deltas)]), layout)
              for i, c in enumerate(clients)]
    agg = pipeline.aggregator
    t0 = time.perf_counter()
    gate = asyncio.Semaphore(concurrency)  # devices upload in parallel, as over gRPC

    async def upload(c: str, data: bytes) -> None:
        async with gate:
            receipt = await coord.upload(c, data)
        assert receipt.accepted, receipt

    await asyncio.gather(*(upload(c, d) for c, d in zip(clients[:-1], frames[:-1],
                                                           strict=True)))
    # wait until the aggregator has folded everything before the last update
    while True:
        state = agg.jobs.get(job)
        if state and state.round and len(state.round.folded) >= n - 1:
            break
        await asyncio.sleep(0.002)
    t_folded = time.perf_counter()
    await coord.upload(clients[-1], frames[-1])  # closes the round (quorum)
    t_last = time.perf_counter()
    result = await coord.wait_round(job)
    t_done = time.perf_counter()
    assert result.ok and len(result.accepted) == n
    await pipeline.stop()
    await bus.stop()
    await store.close()
    mb = (n - 1) * len(frames[0]) / 1e6
    return {"updates_per_s": (n - 1) / (t_folded - t0), "mb_per_s": mb / (t_folded - t0),
            "round_close_s": t_done - t_last, "update_bytes": len(frames[0])}


async def main_async(quick: bool) -> None:
    broker = start_local_broker()
    rows = []
    try:
        cases = [(200, 25_000), (60, 250_000)] if quick else [(1000, 25_000), (300, 250_000)]
        with tempfile.TemporaryDirectory() as tmp:
            for n, params in cases:
                size = params * 4
                floor_s = await broker_floor(broker.address, n, size)
                floor_mb = n * size / 1e6 / floor_s
                run = await pipeline_run(broker.address, n, params, Path(tmp))
                rows.append({"n": n, "params": params, "update_kb": size / 1000,
                             "broker_mb_per_s": floor_mb, **run,
                             "pipeline_over_broker": run["mb_per_s"] / floor_mb})
            close_n, close_p = (20, 1_000_000) if quick else (100, 1_000_000)
            close = await pipeline_run(broker.address, close_n, close_p, Path(tmp))
    finally:
        broker.stop()
    print_table("pipeline over Kafka (Tansu) vs broker floor",
                ["updates", "update KB", "broker MB/s", "pipeline MB/s", "updates/s",
                 "pipeline ÷ broker"],
                [[r["n"], r["update_kb"], r["broker_mb_per_s"], r["mb_per_s"],
                  r["updates_per_s"], r["pipeline_over_broker"]] for r in rows])
    console.print(f"round close ({close_n} updates × {close_p} params): "
                  f"{close['round_close_s'] * 1000:.1f} ms (last update in → model released "
                  "and PUBLISHED persisted)")
    path = write_results("pipeline_quick" if quick else "pipeline",
                         {"rows": rows, "round_close": {"n": close_n, "params": close_p,
                                                        **close}})
    console.print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    asyncio.run(main_async(parser.parse_args().quick))


if __name__ == "__main__":
    main()
