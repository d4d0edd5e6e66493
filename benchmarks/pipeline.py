"""The distributed pipeline's throughput and round-close latency, against the broker's own.

On a local Kafka-wire broker (Tansu, in-memory) and SQLite, all six roles in this process
over the Kafka bus:

* ``broker``   — aiokafka producer → consumer on one topic, no processing: the ceiling;
* ``pipeline`` — N updates, uploaded by 16 concurrent devices, through coordinator
                 ingest (full validation) → tsfl.updates.direct → aggregator fold, timed
                 from the first upload to the last update folded. (The job has neither
                 central DP nor a robust rule, so updates skip the privacy stage's hop and
                 the byzantine stage has nothing to judge.) Floor and pipeline alternate,
                 ``--repeats`` times; the ratio is the median of the pairs;
* round close  — last update in → the new global model published on tsfl.models (acked
                 by the broker), and → the round PUBLISHED persisted by the coordinator
                 (which reads the model back). Three model-sized messages cross the broker
                 after the last update (the update, the aggregate, the model), so the
                 same run measures the broker's own hop for one message of that size
                 (producer → consumer, nothing else running).

Run: ``python -m benchmarks.pipeline [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.progress import Progress

from benchmarks._common import console, print_table, write_results
from tsfl.bus import TOPICS, topics
from tsfl.bus.kafka import KafkaBus
from tsfl.config import parse_job
from tsfl.core.layout import ParamLayout
from tsfl.core.update import Update
from tsfl.pipeline.roles import LocalPipeline
from tsfl.runtime.broker import start_local_broker
from tsfl.storage.store import Store
from tsfl.wire import encode_update


@contextlib.asynccontextmanager
async def _raw_pair(address: str, size: int, partitions: int, **consumer_options: Any
                    ) -> AsyncIterator[tuple[str, AIOKafkaProducer, AIOKafkaConsumer]]:
    """A fresh topic with a plain aiokafka producer and consumer on it, warmed up."""
    topic = f"bench.raw.{size}.{time.monotonic_ns()}"
    bus = KafkaBus(address)
    await bus.start()
    await bus.create_topics({topic: partitions})
    await bus.stop()
    max_bytes = size + 1024**2
    producer = AIOKafkaProducer(bootstrap_servers=address, acks="all",
                                enable_idempotence=False, max_request_size=max_bytes)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=address, group_id=topic,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                max_partition_fetch_bytes=max_bytes,
                                fetch_max_bytes=max_bytes * 4, **consumer_options)
    await producer.start()
    await consumer.start()
    try:
        await producer.send_and_wait(topic, b"warm", key=b"w")
        await asyncio.wait_for(consumer.getone(), 120)  # joined and reading
        yield topic, producer, consumer
    finally:
        await consumer.stop()
        await producer.stop()


#: how long the broker-floor consumer may see nothing before the measurement gives up
STALL_S = 60.0


async def broker_floor(address: str, n: int, size: int) -> float:
    """Seconds to move n messages of size bytes producer → consumer (no processing)."""
    payload = np.random.default_rng(0).bytes(size)
    async with _raw_pair(address, size, 4) as (topic, producer, consumer):
        t0 = time.perf_counter()

        async def produce() -> None:
            for i in range(n):
                await producer.send(topic, payload, key=str(i).encode())
            await producer.flush()

        task = asyncio.create_task(produce())
        got, last_progress = 0, time.monotonic()
        while got < n:
            batch = await consumer.getmany(timeout_ms=1000)
            count = sum(len(v) for v in batch.values())
            got += count
            if count:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > STALL_S:
                task.cancel()
                raise RuntimeError(f"broker floor: {got} of {n} messages arrived, then "
                                   f"nothing for {STALL_S:.0f} s")
        elapsed = time.perf_counter() - t0
        await task
    return elapsed


async def broker_hop(address: str, size: int, repeats: int = 7) -> float:
    """Median seconds for one message of ``size`` bytes, producer → consumer, alone (the
    consumer waits for data as the pipeline's do)."""
    payload = np.random.default_rng(0).bytes(size)
    times = []
    async with _raw_pair(address, size, 1, fetch_max_wait_ms=10) as (topic, producer,
                                                                      consumer):
        for _ in range(repeats):
            t0 = time.perf_counter()
            sent = await producer.send(topic, payload, key=b"k")
            await consumer.getone()
            times.append(time.perf_counter() - t0)
            await sent
    return float(np.median(times))


class _TimedBus(KafkaBus):
    """The Kafka bus, noting when each model release on tsfl.models is acknowledged."""

    def __init__(self, address: str):
        super().__init__(address)
        self.model_acked: list[float] = []

    async def publish(self, topic: str, value: bytes, key: bytes | None = None,
                      headers: Sequence[tuple[str, bytes]] = ()) -> None:
        await super().publish(topic, value, key, headers)
        if topic == topics.MODELS:
            self.model_acked.append(time.perf_counter())


async def pipeline_run(address: str, n: int, params: int, tmp: Path,
                       concurrency: int = 16, lazy: bool = False) -> dict[str, float]:
    """``lazy``: encode each device's frame as it uploads (the round-close case, whose
    1,000 frames of 4 MB would not all fit in memory beside the broker's copy)."""
    bus = _TimedBus(address)
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

    def frame(i: int) -> bytes:
        return encode_update(Update(job, 1, clients[i], 0, 10, deltas[i % len(deltas)]),
                             layout)

    frames = None if lazy else [frame(i) for i in range(n)]
    agg = pipeline.aggregator
    t0 = time.perf_counter()
    gate = asyncio.Semaphore(concurrency)  # devices upload in parallel, as over gRPC

    async def upload(i: int) -> None:
        async with gate:
            receipt = await coord.upload(clients[i], frames[i] if frames else frame(i))
        assert receipt.accepted, receipt

    await asyncio.gather(*(upload(i) for i in range(n - 1)))
    # wait until the aggregator has folded everything before the last update
    while True:
        state = agg.jobs.get(job)
        if state and state.round and len(state.round.folded) >= n - 1:
            break
        await asyncio.sleep(0.002)
    t_folded = time.perf_counter()
    last = frames[-1] if frames else frame(n - 1)
    t_last = time.perf_counter()
    await coord.upload(clients[-1], last)  # closes the round (quorum)
    result = await coord.wait_round(job)
    t_done = time.perf_counter()
    assert result.ok and len(result.accepted) == n
    assert len(bus.model_acked) == 1
    await pipeline.stop()
    await bus.stop()
    await store.close()
    mb = (n - 1) * len(last) / 1e6
    return {"updates_per_s": (n - 1) / (t_folded - t0), "mb_per_s": mb / (t_folded - t0),
            "model_published_s": bus.model_acked[0] - t_last,
            "round_close_s": t_done - t_last, "update_bytes": len(last)}


async def main_async(quick: bool, repeats: int) -> None:
    broker = start_local_broker()
    rows = []
    try:
        cases = [(200, 25_000), (60, 250_000)] if quick else [(1000, 25_000), (300, 250_000)]
        with tempfile.TemporaryDirectory() as tmp, Progress(console=console) as bar:
            task = bar.add_task("pipeline vs broker", total=len(cases) * repeats + 1)
            for n, params in cases:
                size = params * 4
                pairs = []
                for _ in range(repeats):  # alternate: the broker's rate drifts by ±30%
                    floor_mb = n * size / 1e6 / await broker_floor(broker.address, n, size)
                    run = await pipeline_run(broker.address, n, params, Path(tmp))
                    pairs.append((run["mb_per_s"] / floor_mb, floor_mb, run))
                    bar.advance(task)
                pairs.sort(key=lambda p: p[0])
                ratio, floor_mb, run = pairs[len(pairs) // 2]
                rows.append({"n": n, "params": params, "update_kb": size / 1000,
                             "broker_mb_per_s": floor_mb, **run,
                             "pipeline_over_broker": ratio,
                             "ratios": [p[0] for p in pairs]})
            close_n, close_p = (20, 1_000_000) if quick else (1000, 1_000_000)
            close = await pipeline_run(broker.address, close_n, close_p, Path(tmp), lazy=True)
            close["broker_hop_s"] = await broker_hop(broker.address, close["update_bytes"])
            bar.advance(task)
    finally:
        broker.stop()
    print_table("pipeline over Kafka (Tansu) vs broker floor (median of "
                f"{repeats} alternating runs)",
                ["updates", "update KB", "broker MB/s", "pipeline MB/s", "updates/s",
                 "pipeline ÷ broker"],
                [[r["n"], r["update_kb"], r["broker_mb_per_s"], r["mb_per_s"],
                  r["updates_per_s"], r["pipeline_over_broker"]] for r in rows])
    hop = close["broker_hop_s"]
    console.print(f"round close ({close_n} updates × {close_p} params): model published "
                  f"{close['model_published_s'] * 1000:.1f} ms, PUBLISHED persisted "
                  f"{close['round_close_s'] * 1000:.1f} ms after the last update; the "
                  f"broker's own hop for one {close['update_bytes'] / 1e6:.1f} MB message: "
                  f"{hop * 1000:.1f} ms (3 hops: {3 * hop * 1000:.1f} ms)")
    path = write_results("pipeline_quick" if quick else "pipeline",
                         {"rows": rows, "round_close": {"n": close_n, "params": close_p,
                                                        **close}})
    console.print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main_async(args.quick, args.repeats))


if __name__ == "__main__":
    main()
