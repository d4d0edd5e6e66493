"""The coordinator paces its fleet's polls (issue #20): a device that gets no task is told
when to ask again, so that every enrolled device polling at that interval stays within
the coordinator's poll budget — and SDK devices and the load test follow the advice."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from grpc_stack import coordinator_grpc

from tsfl.pipeline.coordinator_devices import MAX_POLL_S, MIN_POLL_S, POLL_BUDGET_PER_S
from tsfl.sdk.grpc_client import next_poll_s
from tsfl.v1 import device_pb2, device_pb2_grpc

SPEC = yaml.safe_dump({"name": "pace", "rounds": 1, "clients": {"count": 50, "per_round": 2},
                       "model": {"kind": "logreg"}, "round": {"deadline_s": 120}})


def test_no_task_comes_with_the_interval_the_fleet_size_calls_for(tmp_path):
    async def go() -> list[int]:
        async with coordinator_grpc(tmp_path / "pace.db") as stack:
            job = (await stack.jobs.submit(SPEC, "enrol")).job_id
            stub = device_pb2_grpc.DeviceServiceStub(stack.channel)
            advised = []
            for enrolled in (3, 4_000, 10_000, 100_000):
                stack.jobs.coordinator.jobs[job].enrolled = enrolled  # as if they enrolled
                reg = await stub.Register(device_pb2.RegisterRequest(
                    job_id=job, device_id=f"d{enrolled}", enrollment_token="enrol"))
                resp = await stub.GetTask(device_pb2.GetTaskRequest(job_id=job), metadata=(
                    ("x-tsfl-device", f"d{enrolled}"),
                    ("authorization", f"Bearer {reg.session_token}")))
                assert not resp.has_task  # the job waits for its 50 devices
                advised.append(resp.retry_after_ms)
            return advised

    advised = asyncio.run(go())
    expected = [max(MIN_POLL_S, min(MAX_POLL_S, 120 / 4, (n + 1) / POLL_BUDGET_PER_S))
                for n in (3, 4_000, 10_000, 100_000)]  # +1: the device that asked
    assert advised == [int(1000 * e) for e in expected]
    assert advised[0] == 500 and advised[-1] == 30_000  # a quarter of the round deadline


@pytest.mark.parametrize(("advice", "silo", "low", "high"), [
    (None, False, 0.2, 0.2),    # no advice: the device's own interval
    (0.1, False, 0.2, 0.2),     # advice shorter than the device's interval
    (10.0, False, 5.0, 15.0),   # followed, jittered ±50%
    (10.0, True, 0.2, 0.2),     # a threshold-HE silo serves openings between tasks
])
def test_devices_follow_the_advice(advice, silo, low, high):
    waits = [next_poll_s(advice, 0.2, silo) for _ in range(200)]
    assert low <= min(waits) and max(waits) <= high


def test_another_jobs_enrolments_cannot_make_devices_miss_rounds(tmp_path):
    """A tenant enrols 100,000 ids in its own job: a victim job with a 20 s round deadline
    still tells its devices to ask again within 5 s (a quarter of its deadline)."""
    async def go() -> int:
        async with coordinator_grpc(tmp_path / "pace.db") as stack:
            coordinator = stack.jobs.coordinator
            big = (await stack.jobs.submit(SPEC, "enrol")).job_id
            coordinator.jobs[big].enrolled = 100_000
            victim = (await stack.jobs.submit(yaml.safe_dump({
                "name": "victim", "rounds": 1, "clients": {"count": 5, "per_round": 2},
                "model": {"kind": "logreg"}, "round": {"deadline_s": 20}}), "v")).job_id
            return int(1000 * coordinator.poll_after_s(victim))

    assert asyncio.run(go()) == 5_000
