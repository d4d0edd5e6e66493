"""Chunked transfers over gRPC: resumable uploads and downloads with bounded buffers."""

import asyncio

import grpc
import numpy as np
import pytest
import xxhash
import yaml

from tsfl.bus import topics
from tsfl.config import parse_job
from tsfl.core.update import Update
from tsfl.pipeline.roles import LocalPipeline
from tsfl.rpc import device_service
from tsfl.rpc import server as rpc_server
from tsfl.rpc.spool import SpoolError, UploadSpool
from tsfl.runtime.jobs import JobManager
from tsfl.runtime.simulation import initial_model
from tsfl.sdk.grpc_transport import GrpcTransport
from tsfl.storage.store import Store
from tsfl.v1 import device_pb2
from tsfl.wire import decode_model, encode_update

JOB = {"name": "xfer", "rounds": 2, "clients": {"count": 1, "per_round": 1},
       "model": {"kind": "mlp", "hidden": [256, 256]}}


def test_spool_resumes_and_checks_its_limits():
    spool = UploadSpool(max_bytes=100, per_device=2)
    up = spool.begin("j", "d", "u1", 10, 7, 0)
    up.write(b"abcd")
    spool.release(up)
    with pytest.raises(SpoolError, match="resume at that offset"):
        spool.begin("j", "d", "u1", 10, 7, 0)
    with pytest.raises(SpoolError, match="another size"):
        spool.begin("j", "d", "u1", 11, 7, 4)
    again = spool.begin("j", "d", "u1", 10, 7, 4)
    with pytest.raises(SpoolError, match="another stream"):
        spool.begin("j", "d", "u1", 10, 7, 4)
    again.write(b"efghij")
    assert again.complete and bytes(again.buf) == b"abcdefghij"
    with pytest.raises(SpoolError, match="more data"):
        again.write(b"k")
    spool.finish(again)
    assert spool.get("j", "d", "u1") is None
    with pytest.raises(SpoolError, match="no partial upload"):
        spool.begin("j", "d", "u2", 10, 7, 5)
    with pytest.raises(SpoolError, match="too many"):
        spool.begin("j", "d", "u3", 101, 7, 0)
    for uid in ("a", "b", "c"):  # a device holds at most two: its oldest goes
        spool.release(spool.begin("j", "d", uid, 10, 0, 0))
    assert spool.get("j", "d", "a") is None and spool.get("j", "d", "c") is not None
    expiring = UploadSpool(ttl_s=0.0)
    expiring.release(expiring.begin("j", "d", "x", 10, 0, 0))
    assert expiring.get("j", "d", "x") is None


class FlakyServicer(device_service.DeviceServicer):
    """Cuts the first upload and the first download stream half-way (a dropped link)."""

    cut_uploads = 1
    cut_downloads = 1

    async def UploadUpdate(self, request_iterator, context):
        servicer = self

        async def cut():
            n = 0
            async for chunk in request_iterator:
                yield chunk
                n += 1
                if servicer.cut_uploads and n == 3:
                    type(servicer).cut_uploads -= 1
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "link dropped")

        return await super().UploadUpdate(cut(), context)

    async def DownloadModel(self, request, context):
        n = 0
        async for chunk in super().DownloadModel(request, context):
            yield chunk
            n += 1
            if self.cut_downloads and n == 2:
                type(self).cut_downloads -= 1
                await context.abort(grpc.StatusCode.UNAVAILABLE, "link dropped")


@pytest.fixture
async def coordinator_server(tmp_path, monkeypatch):
    monkeypatch.setattr(rpc_server, "DeviceServicer", FlakyServicer)
    monkeypatch.setattr(FlakyServicer, "cut_uploads", 1)
    monkeypatch.setattr(FlakyServicer, "cut_downloads", 1)
    monkeypatch.setattr(device_service, "CHUNK_BYTES", 16 * 1024)
    store = await Store.open(f"sqlite:///{tmp_path / 't.db'}")
    pipeline = await LocalPipeline.in_memory(store)
    jobs = JobManager(pipeline.coordinator, registration_timeout_s=30)
    server, port, *_ = await rpc_server.start_coordinator_server(pipeline.coordinator, jobs,
                                                                "127.0.0.1:0")
    try:
        yield pipeline, jobs, f"127.0.0.1:{port}"
    finally:
        await jobs.stop()
        await server.stop(None)
        await pipeline.stop()
        await store.close()


async def _enrol_and_wait_for_task(device):
    await device.register("enrol")
    for _ in range(300):
        task = await device.get_task(device.device_id)
        if task:
            return task
        await asyncio.sleep(0.05)
    raise AssertionError("no task within 15 s")


async def test_interrupted_transfers_resume_byte_identical(coordinator_server):
    pipeline, jobs, address = coordinator_server
    sub = await jobs.submit(yaml.safe_dump(JOB), "enrol")
    spy = pipeline.bus.consumer([topics.UPDATES_DIRECT], "spy")  # no DP, no robust rule
    await spy.start()
    device = GrpcTransport(address, sub.job_id, "client-00000", chunk_bytes=8 * 1024,
                           retry_s=0.05)
    try:
        task = await _enrol_and_wait_for_task(device)
        layout, initial = initial_model(parse_job(JOB))
        model = await device.download_model(sub.job_id, task.model_version)  # cut, resumed
        assert bytes(decode_model(model, layout)[2].tobytes()) == initial.tobytes()
        assert FlakyServicer.cut_downloads == 0

        delta = np.random.default_rng(0).standard_normal(layout.total_size).astype(np.float32)
        data = encode_update(Update(sub.job_id, task.round, "client-00000",
                                    task.model_version, 10, delta, {}), layout)
        assert len(data) > 10 * 8 * 1024
        receipt = await device.upload("client-00000", data)  # cut after 3 chunks, resumed
        assert receipt.accepted, receipt
        assert FlakyServicer.cut_uploads == 0
        record = await spy.getone(timeout=10)
        assert record is not None and bytes(record.value) == data
    finally:
        await spy.stop()
        await device.close()


async def test_resume_protocol_by_hand(coordinator_server):
    """Half an upload, a dropped stream, UploadStatus, the rest from its offset."""
    _, jobs, address = coordinator_server
    FlakyServicer.cut_uploads = FlakyServicer.cut_downloads = 0
    sub = await jobs.submit(yaml.safe_dump(JOB), "enrol")
    device = GrpcTransport(address, sub.job_id, "client-00000", chunk_bytes=4096)
    try:
        task = await _enrol_and_wait_for_task(device)
        layout, _ = initial_model(parse_job(JOB))
        data = encode_update(Update(sub.job_id, task.round, "client-00000",
                                    task.model_version, 10,
                                    np.ones(layout.total_size, np.float32), {}), layout)
        digest = xxhash.xxh3_64_intdigest(data)
        chunks = list(device._chunks(memoryview(data), digest, "up-1", 0))
        stalled = asyncio.Event()

        async def half():
            for c in chunks[: len(chunks) // 2]:
                yield c
            await stalled.wait()

        call = device.stub.UploadUpdate(half(), metadata=device._md())
        status = None
        for _ in range(100):
            await asyncio.sleep(0.05)
            status = await device.stub.UploadStatus(device_pb2.UploadStatusRequest(
                job_id=sub.job_id, upload_id="up-1"), metadata=device._md())
            if status.received == 4096 * (len(chunks) // 2):
                break
        call.cancel()
        assert status.known and status.total_size == len(data)
        offset = status.received
        with pytest.raises(grpc.aio.AioRpcError) as err:  # resuming at the wrong offset
            await device.stub.UploadUpdate(iter(list(device._chunks(
                memoryview(data), digest, "up-1", offset - 4096))), metadata=device._md())
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
        resp = await device.stub.UploadUpdate(iter(list(device._chunks(
            memoryview(data), digest, "up-1", offset))), metadata=device._md())
        assert resp.accepted
        gone = await device.stub.UploadStatus(device_pb2.UploadStatusRequest(
            job_id=sub.job_id, upload_id="up-1"), metadata=device._md())
        assert not gone.known
    finally:
        await device.close()


def test_declared_sizes_reserve_budget_not_memory():
    spool = UploadSpool(max_bytes=1_000, per_device=2)
    a = spool.hold("j", "d", 512, 0)  # a declared size holds no memory until bytes arrive
    assert len(a.buf) == 0 and spool.held_bytes == 512
    with pytest.raises(SpoolError, match="too many"):
        spool.hold("j", "e", 600, 0)  # the global budget counts every upload in flight
    spool.hold("j", "d", 100, 0)
    with pytest.raises(SpoolError, match="in flight"):
        spool.hold("j", "d", 10, 0)  # and each device has at most two
    spool.finish(a)
    assert spool.held_bytes == 100


async def test_an_upload_is_bounded_before_a_byte_is_buffered(coordinator_server):
    """The issue's attack: streams declaring 512 MiB, from a device that was not selected
    and from one that was — refused at the first chunk, nothing held."""
    _, jobs, address = coordinator_server
    FlakyServicer.cut_uploads = FlakyServicer.cut_downloads = 0
    sub = await jobs.submit(yaml.safe_dump({**JOB, "clients": {"count": 2, "per_round": 1}}),
                            "enrol")
    devices = [GrpcTransport(address, sub.job_id, f"client-0000{i}") for i in range(2)]
    try:
        await asyncio.gather(*(d.register("enrol") for d in devices))
        task, picked = None, None
        for _ in range(300):
            for d in devices:
                task = await d.get_task(d.device_id)
                if task:
                    picked = d
                    break
            if picked:
                break
            await asyncio.sleep(0.05)
        assert picked is not None
        other = next(d for d in devices if d is not picked)

        async def declare(device, size: int) -> grpc.StatusCode:
            chunk = device_pb2.UploadChunk(job_id=sub.job_id, total_size=size, checksum=1,
                                           data=b"x" * 16)
            try:
                await device.stub.UploadUpdate(iter([chunk]), metadata=device._md())
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        assert await declare(other, 512 * 1024**2) == grpc.StatusCode.FAILED_PRECONDITION
        assert await declare(picked, 512 * 1024**2) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # (before: both streams got a 512 MiB buffer, then DATA_LOSS for the missing bytes)
    finally:
        for d in devices:
            await d.close()
