"""Two aggregator replicas in the distributed stack (a real Kafka-wire broker, service
processes, SQLite): a job completes with its rounds split between them, and survives
kill -9 of one of them mid-job — the other takes its partitions over after the rebalance
and every update is counted once."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from stack_helpers import check_counted_once as _check_counted_once
from stack_helpers import embedded_final as _embedded_final
from stack_helpers import fleet as _fleet
from stack_helpers import job_info as _job
from stack_helpers import submit as _submit

from tsfl.runtime import stack
from tsfl.runtime.broker import free_port, start_local_broker
from tsfl.storage import Store
from tsfl.storage.states import RoundState

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

JOB = {
    "name": "replicas", "seed": 7, "rounds": 3,
    "clients": {"count": 12, "per_round": 8},
    "model": {"kind": "logreg"},
    "training": {"lr": 0.1, "epochs": 1, "batch_size": 16},
    "round": {"deadline_s": 60},
}


@pytest.fixture(scope="module")
def broker():
    b = start_local_broker()
    yield b
    b.stop()


@pytest.fixture
def replicas(broker, tmp_path, monkeypatch):
    directory = tmp_path / "stack"
    state = stack.up(directory, kafka=broker.address, database=None, grpc_port=free_port(),
                     aggregators=2)
    monkeypatch.setenv("TSFL_ADMIN_TOKEN", state.admin_token)
    yield state, directory
    if (directory / "stack.json").exists():
        stack.down(directory)


def _partitions_logged(directory: Path, name: str) -> list[str]:
    text = (directory / f"{name}.log").read_text(errors="replace")
    return [line.split("partitions ", 1)[1] for line in text.splitlines()
            if ": partitions " in line]


async def _outcome(database: str, job_id: str) -> tuple[np.ndarray, list, list]:
    store = await Store.open(database, migrate_schema=False)
    try:
        ckpt = await store.latest_checkpoint(job_id)
        return (ckpt["vector"], await store.list_rounds(job_id),
                await store.list_participants(job_id))
    finally:
        await store.close()


def test_two_aggregators_split_each_round_and_release_the_single_aggregator_model(
        replicas, tmp_path):
    state, directory = replicas
    job_id = _submit(state.grpc, JOB)
    _fleet(state.grpc, job_id, JOB)
    assert _job(state.grpc, job_id).status == "COMPLETED"
    final, rounds, parts = asyncio.run(_outcome(state.database, job_id))
    _check_counted_once(rounds, parts, JOB)
    assert np.max(np.abs(final - _embedded_final(tmp_path, JOB))) <= 1e-5
    owned = [_partitions_logged(directory, n)[-1] for n in ("aggregator", "aggregator-2")]
    assert sorted(o.split(" (")[0] for o in owned) == ["[0, 1]", "[2, 3]"], owned


def _kill_in_round(state: stack.StackState, job_box: list, number: int) -> None:
    """Background: kill -9 the second aggregator while round ``number`` collects."""

    async def round_state() -> str | None:
        store = await Store.open(state.database, migrate_schema=False)
        try:
            r = await store.get_round(job_box[0], number) if job_box else None
            return r["state"] if r else None
        finally:
            await store.close()

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if asyncio.run(round_state()) == RoundState.COLLECTING:
            break
        time.sleep(0.05)
    job_box.append(asyncio.run(round_state()))
    os.kill(state.services["aggregator-2"]["pid"], signal.SIGKILL)


def test_kill_9_of_one_aggregator_mid_job_the_other_takes_over(replicas, tmp_path):
    state, directory = replicas
    box: list = []
    killer = threading.Thread(target=_kill_in_round, args=(state, box, 2))
    killer.start()
    job_id = _submit(state.grpc, JOB)
    box.append(job_id)
    _fleet(state.grpc, job_id, JOB)
    killer.join(60)
    assert box[1:] == [RoundState.COLLECTING], "the aggregator was not killed mid-job"
    assert _job(state.grpc, job_id).status == "COMPLETED"
    final, rounds, parts = asyncio.run(_outcome(state.database, job_id))
    _check_counted_once(rounds, parts, JOB)
    assert np.max(np.abs(final - _embedded_final(tmp_path, JOB))) <= 1e-5
    # the survivor took the dead replica's partitions over (it owned half of them before)
    last = _partitions_logged(directory, "aggregator")[-1]
    assert last.startswith("[0, 1, 2, 3] (were [") and "(were [0, 1, 2, 3])" not in last
