"""The fleet load test (``tsfl loadtest``): its pieces, and small runs against a real local
stack (broker + six services); and a device retrying a Register the transport cancelled."""

from __future__ import annotations

import asyncio
import os
import time

import grpc
import pytest
from models_for_tests import NoTraining

from tsfl.core.layout import ParamLayout
from tsfl.rpc.retry import Backoff
from tsfl.runtime import stack
from tsfl.runtime.broker import free_port
from tsfl.runtime.loadtest import LoadTestOptions, check_counted_once, percentiles, run_loadtest
from tsfl.runtime.proc_stats import ProcSampler, cpu_seconds, memory_mb
from tsfl.sdk.grpc_client import start_client
from tsfl.v1 import device_pb2, device_pb2_grpc


class _CancelsRegister(device_pb2_grpc.DeviceServiceServicer):
    """A coordinator whose first ``failures`` Register calls end CANCELLED (what one of a
    5,000-device fleet once got), then a job that is already over."""

    def __init__(self, failures: int):
        self.failures = failures
        self.calls = 0

    async def Register(self, request, context):
        self.calls += 1
        if self.calls <= self.failures:
            await context.abort(grpc.StatusCode.CANCELLED, "cancelled under load")
        return device_pb2.RegisterResponse(session_token="s", heartbeat_interval_s=10)

    async def GetTask(self, request, context):
        return device_pb2.GetTaskResponse(has_task=False, job_finished=True)


async def test_a_device_retries_a_register_the_transport_cancelled():
    servicer = _CancelsRegister(failures=3)
    server = grpc.aio.server()
    device_pb2_grpc.add_DeviceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        contributed = await asyncio.wait_for(start_client(
            f"127.0.0.1:{port}", NoTraining(), job_id="job", device_id="dev-1",  # type: ignore[arg-type]
            token="enrol", layout=ParamLayout([("w", (2,), "float32")]),
            backoff=Backoff(base_s=0.01, cap_s=0.05), offload=False), 30)
    finally:
        await server.stop(None)
    assert contributed == 0  # it got through, and the job was over
    assert servicer.calls == 4


def test_proc_sampler_reads_cpu_and_memory_of_a_live_process():
    me = os.getpid()
    assert cpu_seconds(me) is not None and cpu_seconds(2**22 + 12345) is None
    rss, hwm = memory_mb(me) or (0.0, 0.0)
    assert 0 < rss <= hwm
    sampler = ProcSampler({"me": me}, interval_s=0.05).start()
    t0 = time.process_time()
    while time.process_time() - t0 < 0.3:  # burn some CPU
        sum(range(10_000))
    usage = sampler.stop()["me"]
    assert usage.cpu_s >= 0.2 and usage.cpu_percent > 10
    assert usage.peak_rss_mb >= usage.rss_mb > 0


def test_percentiles_and_the_counted_once_check():
    assert percentiles([])["p50"] is None
    p = percentiles([float(x) for x in range(1, 101)])
    assert p["count"] == 100 and p["p50"] == pytest.approx(50.5) and p["max"] == 100
    opts = LoadTestOptions(devices=2, rounds=1)
    rows = [{"round": 1, "client_id": c, "status": "accepted"} for c in ("a", "b")]
    view = {"j": {"rounds": [{"number": 1, "state": "PUBLISHED", "accepted": 2}],
                  "participants": rows}}
    assert check_counted_once(view, [("j", 1, "a"), ("j", 1, "b")], opts)["ok"]
    missing = check_counted_once(view, [("j", 1, "a")], opts)
    assert not missing["ok"] and missing["stored_not_told"] == 1
    view["j"]["rounds"][0]["accepted"] = 3  # the round's count disagrees with its rows
    assert check_counted_once(view, [("j", 1, "a"), ("j", 1, "b")],
                              opts)["rounds_count_mismatch"] == ["j:1"]


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory):
    directory = tmp_path_factory.mktemp("loadtest") / "stack"
    stack.up(directory, kafka=None, database=None, grpc_port=free_port())
    yield directory
    stack.down(directory)


REPORT_FIELDS = {"registrations_per_s", "register_ms", "poll_ms", "download_ms", "upload_ms",
                 "round_s", "rounds", "processes", "counted_once", "retries", "failures"}


@pytest.mark.kafka
@pytest.mark.slow
def test_loadtest_of_50_devices_counts_every_update_once(local_stack):
    report = run_loadtest(LoadTestOptions(
        devices=50, rounds=2, dim=100, workers=2, channels=2, poll_s=0.3, timeout_s=120,
        stack_dir=str(local_stack)))
    assert set(report) >= REPORT_FIELDS
    assert report["counted_once"]["ok"], report["counted_once"]
    assert report["counted_once"]["accepted_rows"] == 100
    assert report["registered"] == 50 and report["registrations_per_s"] > 0
    assert report["poll_ms"]["count"] > 0 and report["upload_ms"]["count"] == 100
    assert report["failures"] == {} and report["job_status"] == ["COMPLETED"]
    assert [r["state"] for r in report["rounds"]] == ["PUBLISHED"] * 2
    names = set(report["processes"])
    assert {"broker", "coordinator", "aggregator", "selector", "worker-0", "worker-1"} <= names
    assert all(p["peak_rss_mb"] > 0 for p in report["processes"].values())


@pytest.mark.kafka
@pytest.mark.slow
def test_ten_concurrent_jobs_of_three_devices_complete_on_one_stack(local_stack):
    report = run_loadtest(LoadTestOptions(
        devices=3, jobs=10, rounds=2, dim=20, workers=1, channels=2, poll_s=0.3,
        timeout_s=150, stack_dir=str(local_stack)))
    assert report["job_status"] == ["COMPLETED"]
    assert report["counted_once"]["ok"], report["counted_once"]
    assert report["counted_once"]["accepted_rows"] == 10 * 2 * 3
