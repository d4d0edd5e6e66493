"""The distributed deployment end to end: six service processes over a real Kafka-wire
broker (Tansu) and PostgreSQL, devices over real gRPC."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from tsfl.config import parse_job
from tsfl.runtime import stack
from tsfl.runtime.broker import free_port, start_local_broker
from tsfl.runtime.embedded import run_embedded
from tsfl.storage import Store
from tsfl.v1 import admin_pb2, admin_pb2_grpc

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
JOB = {
    "name": "dist", "seed": 5, "rounds": 5,
    "clients": {"count": 20, "per_round": 10},
    "model": {"kind": "mlp", "hidden": [32]},
    "training": {"lr": 0.1, "epochs": 2, "batch_size": 16},
    "round": {"deadline_s": 120},
}


@pytest.fixture(scope="module")
def broker():
    b = start_local_broker()
    yield b
    b.stop()


async def _pg(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def database(pg_available):
    if not pg_available:
        pytest.skip("PostgreSQL not reachable")
    name = f"tsfl_it_{uuid.uuid4().hex[:8]}"
    asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def services(broker, database, tmp_path):
    state = stack.up(tmp_path / "stack", kafka=broker.address, database=database,
                     grpc_port=free_port())
    yield state, tmp_path / "stack"
    stack.down(tmp_path / "stack")


def _submit(address: str, job: dict, token: str = "enrol-me") -> str:
    with grpc.insecure_channel(address) as ch:
        info = admin_pb2_grpc.AdminServiceStub(ch).SubmitJob(admin_pb2.SubmitJobRequest(
            spec_yaml=yaml.safe_dump(job), enrollment_token=token), timeout=120)
    return info.job_id


def _job(address: str, job_id: str) -> admin_pb2.JobInfo:
    with grpc.insecure_channel(address) as ch:
        return admin_pb2_grpc.AdminServiceStub(ch).GetJob(admin_pb2.JobRef(job_id=job_id),
                                                          timeout=10)


async def _final_model(database: str, job_id: str) -> tuple[np.ndarray, list, list]:
    store = await Store.open(database)
    try:
        ckpt = await store.latest_checkpoint(job_id)
        return (ckpt["vector"], await store.list_rounds(job_id),
                await store.list_participants(job_id))
    finally:
        await store.close()


def _embedded_final(tmp_path: Path, job: dict) -> np.ndarray:
    return asyncio.run(run_embedded(parse_job(job), tmp_path / "embedded")).final_vector


def _fleet(address: str, job_id: str, job: dict, token: str = "enrol-me") -> list[int]:
    from tsfl.cli.distributed import run_fleet

    return asyncio.run(asyncio.wait_for(
        run_fleet(address, job_id, token, parse_job(job), job["clients"]["count"]), 300))


def _check_counted_once(rounds: list, parts: list, job: dict) -> None:
    assert [r["state"] for r in rounds] == ["PUBLISHED"] * job["rounds"]
    per_round = job["clients"]["per_round"]
    assert all(r["accepted"] == per_round for r in rounds)
    keys = [(p["round"], p["client_id"]) for p in parts if p["status"] == "accepted"]
    assert len(keys) == len(set(keys)) == job["rounds"] * per_round


def test_distributed_job_equals_the_embedded_run(services, database, tmp_path):
    state, _ = services
    job_id = _submit(state.grpc, JOB)
    contributed = _fleet(state.grpc, job_id, JOB)
    assert sum(contributed) == 5 * 10
    assert _job(state.grpc, job_id).status == "COMPLETED"
    final, rounds, parts = asyncio.run(_final_model(database, job_id))
    _check_counted_once(rounds, parts, JOB)
    embedded = _embedded_final(tmp_path, JOB)
    assert np.max(np.abs(final - embedded)) <= 1e-5


def _kill_when_collecting(state: stack.StackState, database: str, name: str,
                          job_id_box: list, round_number: int, directory: Path) -> None:
    """Background: kill -9 a service while round N collects, then start it again."""

    async def round_state() -> str | None:
        store = await Store.open(database, migrate_schema=False)
        try:
            if not job_id_box:
                return None
            r = await store.get_round(job_id_box[0], round_number)
            return r["state"] if r else None
        finally:
            await store.close()

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if asyncio.run(round_state()) == "COLLECTING":
            break
        time.sleep(0.05)
    os.kill(state.services[name]["pid"], signal.SIGKILL)
    time.sleep(1.0)
    stack.start_service(name, state, directory)
    state.save(directory)


@pytest.mark.parametrize("victim", ["aggregator", "coordinator"])
def test_kill_9_mid_round_then_restart_gives_the_same_model(services, database, tmp_path,
                                                             victim):
    import threading

    state, directory = services
    box: list[str] = []
    killer = threading.Thread(target=_kill_when_collecting,
                              args=(state, database, victim, box, 2, directory))
    killer.start()
    job_id = _submit(state.grpc, JOB)
    box.append(job_id)
    _fleet(state.grpc, job_id, JOB)
    killer.join(60)
    assert _job(state.grpc, job_id).status == "COMPLETED"
    final, rounds, parts = asyncio.run(_final_model(database, job_id))
    _check_counted_once(rounds, parts, JOB)
    embedded = _embedded_final(tmp_path, JOB)
    assert np.max(np.abs(final - embedded)) <= 1e-5
