"""Broker outages are visible and recovered: a real Kafka-wire broker (Tansu, in-memory:
nothing survives its restart) stopped and restarted on the same port under real service
processes, admins and devices over real gRPC, a SQLite file database; and the device's
retry policy against a real gRPC server that answers UNAVAILABLE."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from models_for_tests import NoTraining

from tsfl.config import parse_job
from tsfl.core.layout import ParamLayout
from tsfl.rpc.health import check
from tsfl.rpc.retry import Backoff
from tsfl.runtime import stack
from tsfl.runtime.broker import LocalBroker, free_port, start_local_broker
from tsfl.sdk.grpc_client import start_client
from tsfl.storage import Store
from tsfl.v1 import admin_pb2, admin_pb2_grpc, device_pb2, device_pb2_grpc

JOB = {
    "name": "outage", "seed": 3, "rounds": 2,
    "clients": {"count": 4, "per_round": 4},
    "model": {"kind": "mlp", "hidden": [16]},
    "training": {"lr": 0.1, "epochs": 1, "batch_size": 32},
    "round": {"deadline_s": 60},
}
AFTER = {**JOB, "name": "after-outage", "rounds": 1}
#: an outage's error and warning lines, per service, are fewer than this
MAX_OUTAGE_LINES = 50


def _wait(what: str, predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``predicate()`` held; fails the test after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - start


def _admin(address: str, token: str, method: str, request, timeout: float = 60):
    with grpc.insecure_channel(address) as ch:
        return getattr(admin_pb2_grpc.AdminServiceStub(ch), method)(
            request, timeout=timeout, metadata=(("authorization", f"Bearer {token}"),))


def _submit(address: str, token: str, job: dict) -> str:
    return _admin(address, token, "SubmitJob", admin_pb2.SubmitJobRequest(
        spec_yaml=yaml.safe_dump(job), enrollment_token="enrol-me"), timeout=120).job_id


def _job(address: str, token: str, job_id: str) -> admin_pb2.JobInfo:
    return _admin(address, token, "GetJob", admin_pb2.JobRef(job_id=job_id), timeout=10)


def _jobs_by_status(database: str) -> dict[str, str]:
    async def go() -> dict[str, str]:
        store = await Store.open(database, migrate_schema=False)
        try:
            return {r["id"]: r["status"] for r in await store.list_jobs()}
        finally:
            await store.close()

    return asyncio.run(go())


def _log_lines(path: Path, since: int) -> list[dict]:
    """The JSON log lines of a service log after byte ``since``."""
    out = []
    with open(path, "rb") as fh:
        fh.seek(since)
        for line in fh.read().decode(errors="replace").splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


def _fleet_in_background(address: str, job_id: str, job: dict) -> tuple[threading.Thread, list]:
    from tsfl.runtime.fleet import run_fleet

    result: list = []

    def run() -> None:
        try:
            result.append(asyncio.run(asyncio.wait_for(
                run_fleet(address, job_id, "enrol-me", parse_job(job),
                          job["clients"]["count"]), 240)))
        except BaseException as exc:  # surfaced by the test
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


class _Devices:
    """Devices driven step by step over real gRPC (one event loop for their channels)."""

    def __init__(self, address: str, job_id: str, job: dict, count: int):
        from tsfl.runtime.simulation import initial_model
        from tsfl.sdk.grpc_transport import GrpcTransport

        self.loop = asyncio.new_event_loop()
        self.job_id = job_id
        self.layout, _ = initial_model(parse_job(job))
        self.ids = [f"dev-{i}" for i in range(count)]

        async def connect() -> dict[str, GrpcTransport]:  # channels belong to this loop
            return {i: GrpcTransport(address, job_id, i) for i in self.ids}

        self.transports = self.run(connect())

    def run(self, coro, timeout: float = 60):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def register(self) -> None:
        async def go() -> None:
            for t in self.transports.values():
                await t.register("enrol-me")

        self.run(go())

    def tasks(self, round_number: int) -> dict:
        async def go() -> dict:
            got: dict = {}
            while len(got) < len(self.ids):
                for i, t in self.transports.items():
                    task = got.get(i) or await t.get_task(i)
                    if task is not None and task.round >= round_number:
                        got[i] = task
                await asyncio.sleep(0.1)
            return got

        return self.run(go(), 120)

    def upload(self, device: str, task) -> object:
        from tsfl.core.update import Update
        from tsfl.wire import encode_update

        delta = np.full(self.layout.total_size, 1e-3, np.float32)
        frame = encode_update(Update(self.job_id, task.round, device, task.model_version, 10,
                                     delta, {"train_loss": 1.0}), self.layout)
        return self.run(self.transports[device].upload(device, frame))

    def close(self) -> None:
        async def go() -> None:
            for t in self.transports.values():
                await t.close()

        self.run(go())
        self.loop.close()


def _rounds(address: str, token: str, job_id: str) -> list[admin_pb2.RoundInfo]:
    return list(_admin(address, token, "ListRounds", admin_pb2.JobRef(job_id=job_id)).rounds)


@pytest.mark.kafka
@pytest.mark.slow
def test_an_outage_under_a_running_stack_is_visible_and_recovered(tmp_path):
    """Stop the broker under six services while a round collects: every health check
    turns NOT_SERVING, GetJob says why, a submission is UNAVAILABLE (nothing RUNNING
    stored), device calls are UNAVAILABLE. The broker back, empty, on the same port:
    SERVING again, the round whose messages were lost FAILED with that reason, the job
    goes on and completes, a new job completes, and the outage cost each service fewer
    than 50 warning/error lines."""
    port = free_port()
    broker = start_local_broker(port=port)
    directory = tmp_path / "stack"
    state = stack.up(directory, kafka=broker.address, database=None, grpc_port=free_port())
    token = state.admin_token
    assert token is not None
    devices = None
    try:
        _wait("the stack serving", lambda: all(
            check(e["health"]) == "serving" for e in state.services.values()), 90)
        job_id = _submit(state.grpc, token, JOB)
        devices = _Devices(state.grpc, job_id, JOB, JOB["clients"]["count"])
        devices.register()
        tasks = devices.tasks(1)
        first, second, third, _ = devices.ids
        for device in (first, second):  # on the bus, then lost with it
            assert devices.upload(device, tasks[device]).accepted

        marks = {n: Path(e["log"]).stat().st_size for n, e in state.services.items()}
        broker.stop()
        _wait("every service NOT_SERVING", lambda: all(
            check(e["health"]) == "not serving" for e in state.services.values()), 30)
        info = _job(state.grpc, token, job_id)
        assert info.status == "RUNNING" and "broker unreachable since" in info.reason

        with pytest.raises(grpc.RpcError) as refused:
            _submit(state.grpc, token, AFTER)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "broker unreachable, job not started" in refused.value.details()
        assert _jobs_by_status(state.database) == {job_id: "RUNNING"}
        with pytest.raises(grpc.aio.AioRpcError) as upload:
            devices.upload(third, tasks[third])
        assert upload.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "broker unreachable" in upload.value.details()
        with (grpc.insecure_channel(state.grpc) as ch,
              pytest.raises(grpc.RpcError) as register):
            device_pb2_grpc.DeviceServiceStub(ch).Register(device_pb2.RegisterRequest(
                job_id=job_id, device_id="late-device", enrollment_token="enrol-me"),
                timeout=10)
        assert register.value.code() == grpc.StatusCode.UNAVAILABLE

        broker = start_local_broker(port=port)  # back, empty, on the same port
        _wait("every service SERVING again", lambda: all(
            check(e["health"]) == "serving" for e in state.services.values()), 60)
        assert _job(state.grpc, token, job_id).reason == ""
        lost = _rounds(state.grpc, token, job_id)[0]
        assert lost.state == "FAILED" and "broker restarted" in lost.reason
        tasks = devices.tasks(2)
        for device in devices.ids:
            assert devices.upload(device, tasks[device]).accepted
        _wait("the job completed", lambda: _job(state.grpc, token, job_id).status
              == "COMPLETED", 60)
        assert [r.state for r in _rounds(state.grpc, token, job_id)] == [
            "FAILED", "PUBLISHED"]

        after = _submit(state.grpc, token, AFTER)
        thread, done = _fleet_in_background(state.grpc, after, AFTER)
        thread.join(180)
        assert done and sum(done[0]) == AFTER["clients"]["per_round"]
        assert _job(state.grpc, token, after).status == "COMPLETED"

        for name, entry in state.services.items():
            lines = [e for e in _log_lines(Path(entry["log"]), marks[name])
                     if e["level"] in ("warning", "error", "critical")]
            assert len(lines) < MAX_OUTAGE_LINES, (name, len(lines), lines[-5:])
    finally:
        if devices is not None:
            devices.close()
        if (directory / "stack.json").exists():
            stack.down(directory)
        broker.stop()


def _service(name: str, broker: LocalBroker, database: str, directory: Path
             ) -> tuple[subprocess.Popen[bytes], str]:
    address = f"127.0.0.1:{free_port()}"
    cmd = stack.service_command(name, broker.address, database, address, address)
    log = open(directory / f"{name}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    return proc, address


def _terminate(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.kafka
@pytest.mark.slow
def test_submitting_while_the_broker_is_down_is_unavailable_and_cancel_acts(tmp_path):
    """A coordinator whose broker is down refuses a job with UNAVAILABLE and stores
    nothing RUNNING; CancelJob cancels a RUNNING job even then (its row changes)."""
    port = free_port()
    broker = start_local_broker(port=port)
    database = f"sqlite:///{tmp_path / 'tsfl.db'}"
    token = stack.issue_admin_token(database, "op", "operator")
    coordinator, address = _service("coordinator", broker, database, tmp_path)
    try:
        _wait("the coordinator serving", lambda: check(address) == "serving", 60)
        running = _submit(address, token, JOB)
        broker.stop()
        # at once (the publish of its start times out: a FAILED row, if any) and once
        # the outage is known (refused before anything is stored)
        for known in (False, True):
            if known:
                _wait("the coordinator NOT_SERVING", lambda: check(address) == "not serving",
                      30)
            with pytest.raises(grpc.RpcError) as refused:
                _submit(address, token, AFTER)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "broker unreachable, job not started" in refused.value.details()
        statuses = _jobs_by_status(database)
        assert statuses.pop(running) == "RUNNING"
        assert set(statuses.values()) <= {"FAILED"}  # nothing else RUNNING, ever

        info = _admin(address, token, "CancelJob", admin_pb2.JobRef(job_id=running))
        assert info.status == "CANCELLED"
        assert _jobs_by_status(database)[running] == "CANCELLED"
        with pytest.raises(grpc.RpcError) as again:
            _admin(address, token, "CancelJob", admin_pb2.JobRef(job_id=running))
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        _terminate([coordinator])
        broker.stop()


@pytest.mark.kafka
@pytest.mark.slow
def test_sigterm_while_the_broker_is_down_stops_every_service(tmp_path):
    """SIGTERM during an outage: each service exits by itself, cleanly (the test bounds
    the wait to keep the suite live, not to measure it)."""
    port = free_port()
    broker = start_local_broker(port=port)
    database = f"sqlite:///{tmp_path / 'tsfl.db'}"
    procs = {name: _service(name, broker, database, tmp_path)
             for name in ("coordinator", "aggregator")}
    try:
        for name, (_, address) in procs.items():
            _wait(f"{name} serving", lambda a=address: check(a) == "serving", 60)
        broker.stop()
        for name, (_, address) in procs.items():
            _wait(f"{name} NOT_SERVING", lambda a=address: check(a) == "not serving", 30)
        for proc, _ in procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, (proc, _) in procs.items():
            assert proc.wait(timeout=30) == 0, name
            assert f'"msg": "{name} stopped"' in (tmp_path / f"{name}.log").read_text()
    finally:
        _terminate([p for p, _ in procs.values()])
        broker.stop()


class _Unavailable(device_pb2_grpc.DeviceServiceServicer):
    """A coordinator whose broker is down for the first ``failures`` registrations (the
    answer the real one gives), then a job that is already over."""

    def __init__(self, failures: int):
        self.failures = failures
        self.calls: list[float] = []

    async def Register(self, request, context):
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "broker unreachable since 2026-01-01T00:00:00Z; the call is "
                                "safe to retry later")
        return device_pb2.RegisterResponse(session_token="s", heartbeat_interval_s=10)

    async def GetTask(self, request, context):
        return device_pb2.GetTaskResponse(has_task=False, job_finished=True)


def test_backoff_grows_to_its_cap_with_jitter_below_it():
    backoff = Backoff(base_s=0.1, cap_s=1.0, jitter=0.5)
    assert [backoff.ceiling(n) for n in range(7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    rng = random.Random(7)
    for n in range(40):
        delay = backoff.delay(n, rng)
        assert 0.5 * backoff.ceiling(n) <= delay <= backoff.ceiling(n)
    assert len({round(backoff.delay(9, rng), 6) for _ in range(20)}) > 1  # jittered
    assert backoff.ceiling(10_000) == 1.0  # no overflow, whatever the count
    with pytest.raises(ValueError):
        Backoff(base_s=2.0, cap_s=1.0)


async def test_a_device_retries_unavailable_with_capped_backoff_until_it_is_answered():
    """UNAVAILABLE (the coordinator's broker is down) is retried, not given up on: each
    wait at least the jitter floor of the back-off's ceiling, none above the cap."""
    servicer = _Unavailable(failures=4)
    server = grpc.aio.server()
    device_pb2_grpc.add_DeviceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    backoff = Backoff(base_s=0.05, cap_s=0.2, jitter=0.5)
    try:
        contributed = await asyncio.wait_for(start_client(
            f"127.0.0.1:{port}", NoTraining(), job_id="job", device_id="dev-1",  # type: ignore[arg-type]
            token="enrol", layout=ParamLayout([("w", (2,), "float32")]), backoff=backoff,
            offload=False), 30)
    finally:
        await server.stop(None)
    assert contributed == 0  # the job was over once the device got through
    assert len(servicer.calls) == 5
    waits = np.diff(servicer.calls)
    for n, wait in enumerate(waits):
        assert wait >= 0.5 * backoff.ceiling(n) * 0.9, (n, waits)
    assert waits.max() < backoff.cap_s + 1.0


def test_repeated_kafka_client_lines_pass_once_per_window_with_their_count():
    import logging

    from tsfl.bus.log_throttle import Throttle, ThrottleFilter

    now = [0.0]
    throttle = Throttle(every_s=30.0, clock=lambda: now[0])
    assert throttle.admit("k") == 0
    assert [throttle.admit("k") for _ in range(49)] == [None] * 49
    assert throttle.admit("other") == 0  # another kind is not held back
    now[0] = 30.0
    assert throttle.admit("k") == 49  # the next line says how many were held

    flt = ThrottleFilter(every_s=30.0)

    def record(name: str, arg: int) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1,
                                 "Unable connect to node with id %s", (arg,), None)

    passed = [r for r in (record("aiokafka", i) for i in range(100)) if flt.filter(r)]
    assert len(passed) == 1  # one template, whatever its arguments
    assert all(flt.filter(record("tsfl.jobs", i)) for i in range(5))  # ours: untouched
