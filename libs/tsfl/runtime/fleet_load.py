"""One worker process of a fleet load test: many lightweight protocol devices over a few
shared gRPC channels.

Each device speaks the real device protocol (DeviceService over gRPC): ``Register``,
then ``GetTask`` every ``poll_s`` (jittered); given a task it streams the model down
(``DownloadModel``, checked against its declared size) and uploads a real update frame
(:func:`~tsfl.wire.messages.encode_update`) of the job's layout — a synthetic delta,
no training — by ``UploadUpdate``. Devices share ``channels`` HTTP/2 connections (one
per device would cost thousands of sockets and handshakes). Every call has a deadline;
transient failures (:data:`~tsfl.rpc.retry.TRANSIENT`, and ``CANCELLED``) are retried
with capped exponential back-off and counted by status code. A device stops when the
coordinator says its job finished, on a failure that is not transient, or at the
worker's deadline: the worker always ends by itself.

Run as ``python -m tsfl.runtime.fleet_load CONFIG.json REPORT.json``: a
:class:`WorkerConfig` in, the worker's :class:`WorkerReport` out.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import numpy as np
import xxhash

from tsfl.core.layout import ParamLayout
from tsfl.core.update import Update
from tsfl.errors import TsflError
from tsfl.rpc.common import DEVICE_HEADER, MAX_UNARY_BYTES, grpc_options
from tsfl.rpc.retry import TRANSIENT, Backoff
from tsfl.v1 import device_pb2, device_pb2_grpc
from tsfl.wire.messages import encode_update

#: what a load-test device retries: the SDK's transient codes, and CANCELLED (an RPC the
#: transport dropped under load, e.g. a connection reset; every call here is idempotent)
RETRIED = TRANSIENT | {grpc.StatusCode.CANCELLED}


@dataclass
class WorkerConfig:
    """What one worker process runs: ``devices`` as (job id, enrolment token, device id)."""

    address: str
    devices: list[tuple[str, str, str]]
    channels: int = 4
    poll_s: float = 5.0
    #: wait as long as the coordinator advises after a "no task" (retry_after_ms) when it
    #: asks for more than poll_s, as an SDK device does
    follow_advice: bool = True
    register_concurrency: int = 64
    deadline_s: float = 600.0
    call_timeout_s: float = 60.0
    seed: int = 0


@dataclass
class WorkerReport:
    """What a worker saw. Latencies are in milliseconds; times are wall-clock seconds."""

    devices: int = 0
    registered: int = 0
    register_ms: list[float] = field(default_factory=list)
    register_first_s: float | None = None  # when the first Register was sent
    register_last_s: float | None = None   # when the last one was answered
    poll_ms: list[float] = field(default_factory=list)
    download_ms: list[float] = field(default_factory=list)
    upload_ms: list[float] = field(default_factory=list)
    retries: dict[str, int] = field(default_factory=dict)      # status code -> count
    retry_details: dict[str, str] = field(default_factory=dict)  # code -> its first details
    failures: dict[str, int] = field(default_factory=dict)     # devices given up, by code
    refused: dict[str, int] = field(default_factory=dict)      # uploads refused, by code
    accepted: list[tuple[str, int, str]] = field(default_factory=list)  # (job, round, device)
    # (job, round) -> [first task seen, last upload answered] (wall clock)
    rounds: dict[str, list[float]] = field(default_factory=dict)
    finished: int = 0        # devices told their job finished
    timed_out: bool = False  # the worker's deadline ended it
    bytes_down: int = 0
    bytes_up: int = 0


class _Fatal(TsflError):
    """A device's non-transient failure: it stops."""

    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


class Fleet:
    """The devices of one worker and what they measure."""

    def __init__(self, cfg: WorkerConfig):
        self.cfg = cfg
        self.report = WorkerReport(devices=len(cfg.devices))
        self.rng = random.Random(cfg.seed)
        self.backoff = Backoff(base_s=0.2, cap_s=5.0)
        self.register_gate = asyncio.Semaphore(cfg.register_concurrency)
        self.layouts: dict[str, ParamLayout] = {}
        self.deltas: dict[str, np.ndarray] = {}
        self._retries: Counter[str] = Counter()
        self._details: dict[str, str] = {}
        self._failures: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._rounds: dict[str, list[float]] = defaultdict(lambda: [float("inf"), 0.0])

    def _retried(self, exc: grpc.aio.AioRpcError) -> None:
        self._retries[exc.code().name] += 1
        self._details.setdefault(exc.code().name, (exc.details() or "")[:300])

    async def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """One unary call, retried on transient failures until the worker's deadline."""
        attempt = 0
        while True:
            try:
                return await fn(*args, timeout=self.cfg.call_timeout_s, **kw)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRIED:
                    raise _Fatal(exc.code().name) from None
                self._retried(exc)
                await asyncio.sleep(self.backoff.delay(attempt, self.rng))
                attempt += 1

    async def register(self, stub: Any, job_id: str, token: str, device: str) -> str:
        async with self.register_gate:
            now = time.time()
            if self.report.register_first_s is None or now < self.report.register_first_s:
                self.report.register_first_s = now
            t0 = time.perf_counter()
            resp = await self._call(stub.Register, device_pb2.RegisterRequest(
                job_id=job_id, device_id=device, enrollment_token=token,
                traits=device_pb2.DeviceTraits(battery=-1)))
            self.report.register_ms.append(1000 * (time.perf_counter() - t0))
            self.report.register_last_s = time.time()
        self.report.registered += 1
        if job_id not in self.layouts and resp.layout_json:
            layout = ParamLayout.from_json(json.loads(resp.layout_json))
            self.layouts[job_id] = layout
            self.deltas[job_id] = (np.random.default_rng(self.cfg.seed).standard_normal(
                layout.total_size).astype(np.float32) * np.float32(1e-3))
        return str(resp.session_token)

    async def download(self, stub: Any, md: tuple, job_id: str, version: int) -> None:
        for attempt in range(8):
            received, total = 0, None
            t0 = time.perf_counter()
            try:
                async for chunk in stub.DownloadModel(device_pb2.DownloadModelRequest(
                        job_id=job_id, version=version, offset=0), metadata=md,
                        timeout=self.cfg.call_timeout_s):
                    total = chunk.total_size if total is None else total
                    received += len(chunk.data)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRIED:
                    raise _Fatal(f"download:{exc.code().name}") from None
                self._retried(exc)
                await asyncio.sleep(self.backoff.delay(attempt, self.rng))
                continue
            if total is None or received != total:
                raise _Fatal("download:incomplete")
            self.report.download_ms.append(1000 * (time.perf_counter() - t0))
            self.report.bytes_down += received
            return
        raise _Fatal("download:retries")

    async def upload(self, stub: Any, md: tuple, job_id: str, device: str, round_no: int,
                     version: int) -> bool:
        """Send the update; False when every attempt failed transiently (the device asks
        for the task again at its next poll, as an SDK device would)."""
        layout = self.layouts[job_id]
        scale = np.float32(1.0 + (xxhash.xxh32_intdigest(device.encode()) % 1000) / 1e4)
        data = encode_update(Update(job_id=job_id, round=round_no, client_id=device,
                                    model_version=version, num_examples=10,
                                    delta=self.deltas[job_id] * scale), layout)
        digest, upload_id = xxhash.xxh3_64_intdigest(data), uuid.uuid4().hex

        def chunks() -> Any:
            yield device_pb2.UploadChunk(job_id=job_id, total_size=len(data), checksum=digest,
                                         data=data, upload_id=upload_id, offset=0)

        key = f"{job_id}:{round_no}"
        for attempt in range(8):
            t0 = time.perf_counter()
            try:
                resp = await stub.UploadUpdate(chunks(), metadata=md,
                                               timeout=self.cfg.call_timeout_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in RETRIED:
                    self._retried(exc)
                    await asyncio.sleep(self.backoff.delay(attempt, self.rng))
                    continue
                code = (exc.details() or "").split(":", 1)[0] or exc.code().name
                self._refused[code] += 1
                if code == "duplicate":  # an earlier attempt of ours was counted
                    self.report.accepted.append((job_id, round_no, device))
                break
            self.report.upload_ms.append(1000 * (time.perf_counter() - t0))
            self.report.bytes_up += len(data)
            if resp.accepted:
                self.report.accepted.append((job_id, round_no, device))
            else:
                self._refused[resp.code or "refused"] += 1
            break
        else:  # every attempt failed transiently: try the task again at the next poll
            self._retries["upload_again"] += 1
            return False
        self._rounds[key][1] = max(self._rounds[key][1], time.time())
        return True

    async def device(self, stub: Any, job_id: str, token: str, device: str) -> None:
        try:
            session = await self.register(stub, job_id, token, device)
            md = ((DEVICE_HEADER, device), ("authorization", f"Bearer {session}"))
            done: set[int] = set()
            # the first poll spread over one interval: devices do not poll in lockstep
            await asyncio.sleep(self.rng.uniform(0, self.cfg.poll_s))
            while True:
                t0 = time.perf_counter()
                resp = await self._call(stub.GetTask, device_pb2.GetTaskRequest(
                    job_id=job_id), metadata=md)
                self.report.poll_ms.append(1000 * (time.perf_counter() - t0))
                if resp.job_finished:
                    self.report.finished += 1
                    return
                if resp.has_task and resp.round not in done:
                    key = f"{job_id}:{resp.round}"
                    self._rounds[key][0] = min(self._rounds[key][0], time.time())
                    await self.download(stub, md, job_id, resp.model_version)
                    if await self.upload(stub, md, job_id, device, resp.round,
                                         resp.model_version):
                        done.add(resp.round)
                wait = (resp.retry_after_ms / 1000 if resp.retry_after_ms and not resp.has_task
                        and self.cfg.follow_advice else self.cfg.poll_s)
                await asyncio.sleep(max(wait, self.cfg.poll_s) * self.rng.uniform(0.5, 1.5))
        except _Fatal as exc:
            self._failures[exc.code] += 1
        except Exception as exc:  # counted, and the first of each kind shown
            name = type(exc).__name__
            if not self._failures[name]:
                print(f"fleet device {device}: {name}: {exc}", file=sys.stderr)
            self._failures[name] += 1

    async def run(self) -> WorkerReport:
        opts = grpc_options(MAX_UNARY_BYTES)
        # a local subchannel pool: each channel its own connection (not one shared)
        channels = [grpc.aio.insecure_channel(
            self.cfg.address, options=[*opts, ("grpc.use_local_subchannel_pool", 1)])
            for i in range(max(1, self.cfg.channels))]
        stubs = [device_pb2_grpc.DeviceServiceStub(c) for c in channels]
        tasks = [asyncio.ensure_future(self.device(stubs[i % len(stubs)], job, token, dev))
                 for i, (job, token, dev) in enumerate(self.cfg.devices)]
        try:
            _, pending = await asyncio.wait(tasks, timeout=self.cfg.deadline_s)
            if pending:
                self.report.timed_out = True
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            for c in channels:
                await c.close()
        self.report.retries = dict(self._retries)
        self.report.retry_details = dict(self._details)
        self.report.failures = dict(self._failures)
        self.report.refused = dict(self._refused)
        self.report.rounds = {k: v for k, v in self._rounds.items() if v[1] > 0}
        return self.report


def main(argv: list[str] | None = None) -> int:
    config, out = (sys.argv[1:] if argv is None else argv)[:2]
    with open(config) as fh:
        raw = json.load(fh)
    raw["devices"] = [tuple(d) for d in raw["devices"]]
    report = asyncio.run(Fleet(WorkerConfig(**raw)).run())
    with open(out, "w") as fh:
        json.dump(asdict(report), fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
