"""Unauthenticated work against the device API (issue #16): anonymous heartbeats, huge
device ids, wrong enrolment tokens and id takeovers — refused with one answer, rate-limited
per peer, and audited in aggregate (bounded rows). Real gRPC over the embedded pipeline."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
import yaml
from grpc_stack import coordinator_grpc, status_of

from tsfl.rpc.guard import PeerLimiter, RefusalLog
from tsfl.v1 import device_pb2, device_pb2_grpc

SPEC = yaml.safe_dump({"name": "guard", "rounds": 2, "clients": {"count": 50, "per_round": 2},
                       "model": {"kind": "logreg"}})


async def _scenario(tmp_path) -> dict:
    out: dict = {}
    code = status_of
    async with coordinator_grpc(tmp_path / "guard.db") as stack:
        store, jobs = stack.store, stack.jobs
        stub = device_pb2_grpc.DeviceServiceStub(stack.channel)
        job = (await jobs.submit(SPEC, "enrol")).job_id
        start = len(await store.audit_trail(job))
        await code(stub.Heartbeat(device_pb2.HeartbeatRequest(job_id=job), metadata=(
            ("x-tsfl-device", "anon"), ("authorization", "Bearer nope"))))
        out["heartbeat_refusal"] = [(e["kind"], e["payload"]["code"])
                                    for e in (await store.audit_trail(job))[start:]]
        out["huge_id"] = await code(stub.Register(device_pb2.RegisterRequest(
            job_id=job, device_id="x" * 1_000_000, enrollment_token="enrol")))
        # the issue's +8.7 MB: a 1 MB device id with a wrong token wrote audit rows
        out["huge_id_wrong_token"] = await code(stub.Register(device_pb2.RegisterRequest(
            job_id=job, device_id="y" * 1_000_000, enrollment_token="wrong")))
        reg = await stub.Register(device_pb2.RegisterRequest(
            job_id=job, device_id="dev-1", enrollment_token="enrol"))
        md = (("x-tsfl-device", "dev-1"), ("authorization", f"Bearer {reg.session_token}"))
        await stub.Heartbeat(device_pb2.HeartbeatRequest(job_id=job), metadata=md)  # live
        empty = await code(stub.UploadUpdate(iter([]), metadata=md))
        truncated = await code(stub.UploadUpdate(iter([device_pb2.UploadChunk(
            job_id=job, total_size=1000, checksum=1, data=b"x")]), metadata=md))
        out["streams"] = (empty, truncated)
        out["takeover"] = await code(stub.Register(device_pb2.RegisterRequest(
            job_id=job, device_id="dev-1", enrollment_token="enrol")))
        out["own_reenrol"] = await code(stub.Register(device_pb2.RegisterRequest(
            job_id=job, device_id="dev-1", enrollment_token="enrol"), metadata=md))
        ghost = (("x-tsfl-device", "never-enrolled"), ("authorization", "Bearer x"))
        wrong = (("x-tsfl-device", "dev-1"), ("authorization", "Bearer x"))
        out["ghost_vs_wrong"] = (
            await code(stub.GetTask(device_pb2.GetTaskRequest(job_id=job), metadata=ghost)),
            await code(stub.GetTask(device_pb2.GetTaskRequest(job_id=job), metadata=wrong)))
        before = len(await store.audit_trail(job))
        beats = [await code(stub.Heartbeat(device_pb2.HeartbeatRequest(job_id=job),
                                           metadata=(("x-tsfl-device", f"anon-{i}"),
                                                     ("authorization", "Bearer nope"))))
                 for i in range(200)]
        out["beats"] = {c: beats.count(c) for c in set(beats)}
        trail = await store.audit_trail(job)
        out["rows_added"] = len(trail) - before
        rows = [*await store.audit_trail(job), *await store.audit_trail("_system")]
        out["largest_row"] = max(len(json.dumps(e["payload"])) for e in rows)
        out["stream_audit"] = {e["payload"]["code"]
                               for chain in (job, "_system")
                               for e in await store.audit_trail(chain)
                               if e["kind"] == "upload.refused"}
        out["chain"] = await store.verify_audit(job)
    return out


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    return asyncio.run(_scenario(tmp_path_factory.mktemp("guard")))


def test_anonymous_calls_are_rate_limited_and_audited_in_bounded_rows(outcome):
    S = grpc.StatusCode
    assert set(outcome["beats"]) == {S.UNAUTHENTICATED, S.RESOURCE_EXHAUSTED}
    assert outcome["beats"][S.UNAUTHENTICATED] <= 25  # the burst, then the limiter
    assert outcome["rows_added"] <= 2
    # finding 9: refused heartbeats were audited as upload.refused
    assert outcome["heartbeat_refusal"] == [("call.refused", "bad_credentials")]
    assert outcome["chain"] == (True, "ok")


def test_device_ids_are_bounded_before_anything_is_written(outcome):
    assert outcome["huge_id"] == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome["huge_id_wrong_token"] == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome["largest_row"] < 4096  # no row carries a megabyte id


def test_a_live_device_id_cannot_be_taken_over(outcome):
    assert outcome["takeover"] == grpc.StatusCode.UNAUTHENTICATED
    assert outcome["own_reenrol"] == grpc.StatusCode.OK


def test_refusals_do_not_reveal_who_is_enrolled(outcome):
    ghost, wrong = outcome["ghost_vs_wrong"]
    assert ghost == wrong


def test_limiter_and_log_units():
    limiter = PeerLimiter(rate=0.0, burst=3)
    for _ in range(3):
        assert limiter.allowed("p")
        limiter.charge("p")
    assert not limiter.allowed("p") and limiter.allowed("q")
    rows = []

    async def write(chain, kind, payload):
        rows.append((chain, kind, payload["count"]))

    async def go():
        log = RefusalLog(write, window_s=3600)
        for _ in range(5):
            await log.refused("j", "call.refused", "bad", {"peer": "p"})
        for _ in range(2):
            await log.refused("j", "upload.refused", "bad", {"peer": "p"})
        await log.flush()

    asyncio.run(go())
    # nothing lost, one row per (chain, kind, code) and window, each under its own kind
    assert rows == [("j", "call.refused", 1), ("j", "upload.refused", 1),
                    ("j", "call.refused", 4), ("j", "upload.refused", 1)]


def test_a_burst_is_counted_whole_when_its_window_ends():
    """200 refusals in a burst, then silence: the 199 held back were counted only if a
    later refusal came (never, for an attacker who stops). The window's end writes them."""
    rows = []

    async def write(chain, kind, payload):
        rows.append((kind, payload["count"]))

    async def go():
        log = RefusalLog(write, window_s=0.2)
        for _ in range(200):
            await log.refused("j", "call.refused", "bad_credentials", {"peer": "p"})
        assert rows == [("call.refused", 1)]
        await asyncio.sleep(0.5)  # no flush, no later refusal

    asyncio.run(go())
    assert rows == [("call.refused", 1), ("call.refused", 199)]


def test_empty_and_refused_streams_are_audited(outcome):
    empty, truncated = outcome["streams"]
    assert empty == grpc.StatusCode.INVALID_ARGUMENT
    # dev-1 is not selected in an open round: refused at its first chunk, before a buffer
    assert truncated == grpc.StatusCode.FAILED_PRECONDITION
    assert {"empty", "not_selected"} <= outcome["stream_audit"]


async def _truncated_stream(tmp_path) -> tuple[grpc.StatusCode, list]:
    from tsfl.sdk.grpc_transport import GrpcTransport

    spec = yaml.safe_dump({"name": "trunc", "rounds": 1, "clients": {"count": 1,
                                                                     "per_round": 1},
                           "model": {"kind": "logreg"}})
    async with coordinator_grpc(tmp_path / "trunc.db") as stack:
        job = (await stack.jobs.submit(spec, "enrol")).job_id
        device = GrpcTransport(stack.address, job, "dev-t")
        try:
            await device.register("enrol")
            for _ in range(300):  # selected in the job's open round
                if await device.get_task("dev-t"):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("dev-t was never given a task")
            chunk = device_pb2.UploadChunk(job_id=job, total_size=100, checksum=1,
                                           data=b"x" * 10)  # then the stream ends
            ended = await status_of(device.stub.UploadUpdate(iter([chunk]),
                                                             metadata=device._md()))
        finally:
            await device.close()
        rows = [(e["kind"], e["payload"]) for e in await stack.store.audit_trail(job)
                if e["kind"] == "upload.refused"]
    return ended, rows


def test_a_truncated_stream_of_a_selected_device_is_audited(tmp_path):
    """Issue #16, finding 9: truncated (non-resumable) upload streams left no trace."""
    ended, rows = asyncio.run(_truncated_stream(tmp_path))
    assert ended == grpc.StatusCode.DATA_LOSS
    assert [(kind, p["code"], p["count"]) for kind, p in rows] == [
        ("upload.refused", "truncated", 1)]
    assert rows[0][1]["samples"][0] == {"client_id": "dev-t", "received": 10, "total": 100}


def test_a_server_that_stops_writes_the_refusals_it_still_held(tmp_path):
    """15 anonymous heartbeats (within the per-peer limit) inside one audit window, then
    the coordinator stops: the window's count is written at the stop, not lost with it."""
    from tsfl.storage import Store

    async def go() -> list[int]:
        async with coordinator_grpc(tmp_path / "stop.db") as stack:
            job = (await stack.jobs.submit(SPEC, "enrol")).job_id
            stub = device_pb2_grpc.DeviceServiceStub(stack.channel)
            for i in range(15):
                await status_of(stub.Heartbeat(device_pb2.HeartbeatRequest(job_id=job),
                                               metadata=(("x-tsfl-device", f"anon-{i}"),
                                                         ("authorization", "Bearer no"))))
        store = await Store.open(f"sqlite:///{tmp_path / 'stop.db'}")
        try:
            return [e["payload"]["count"] for e in await store.audit_trail(job)
                    if e["kind"] in ("call.refused", "call.refused.held")]
        finally:
            await store.close()

    counts = asyncio.run(go())
    assert sum(counts) == 15 and len(counts) == 2, counts  # the first, then the window
