"""Replicated stages in the distributed stack (a real Kafka-wire broker, service processes,
SQLite): two aggregator and two byzantine replicas. A plain job's rounds are folded by
both aggregators (hierarchical aggregation); a robust job's rounds are judged by one
byzantine replica each and its client history travels through the store; and the job
survives kill -9 of one replica of each stage mid-round — the survivors take the dead
ones' partitions over after the rebalance and every update is counted once.

Each test starts its own broker (with the stack): a consumer group whose members died
is not reused across tests."""

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
from stack_helpers import final_model as _final_model
from stack_helpers import fleet as _fleet
from stack_helpers import job_info as _job
from stack_helpers import submit as _submit

from tsfl.runtime import stack
from tsfl.runtime.broker import free_port
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
ROBUST = {**JOB, "name": "replicas-robust", "seed": 8, "rounds": 4,
          "robust": {"aggregator": "multikrum", "num_malicious": 1}}
KEPT = {JOB["name"]: None, ROBUST["name"]: 7}  # Multi-Krum with f = 1 keeps n - f


@pytest.fixture
def replicas(tmp_path, monkeypatch):
    directory = tmp_path / "stack"
    state = stack.up(directory, kafka=None, database=None, grpc_port=free_port(),
                     aggregators=2, byzantine=2)
    monkeypatch.setenv("TSFL_ADMIN_TOKEN", state.admin_token)
    yield state, directory
    if (directory / "stack.json").exists():
        stack.down(directory)


def _partitions_logged(directory: Path, name: str) -> list[str]:
    text = (directory / f"{name}.log").read_text(errors="replace")
    return [line.split("partitions ", 1)[1] for line in text.splitlines()
            if ": partitions " in line]


def _run_job(state: stack.StackState, job: dict) -> tuple[np.ndarray, list, list]:
    job_id = _submit(state.grpc, job)
    _fleet(state.grpc, job_id, job)
    assert _job(state.grpc, job_id).status == "COMPLETED"
    return asyncio.run(_final_model(state.database, job_id))


def test_two_replicas_of_each_stage_release_the_single_replica_models(replicas, tmp_path):
    state, directory = replicas
    for stage in ("aggregator", "byzantine"):  # each replica owns half the partitions
        _wait_for_split(directory, stage)
    for job in (JOB, ROBUST):
        final, rounds, parts = _run_job(state, job)
        _check_counted_once(rounds, parts, job, KEPT[job["name"]])
        assert np.max(np.abs(final - _embedded_final(tmp_path / job["name"], job))) <= 1e-5
    # the robust job's rounds were judged where their partition lives; every round once
    judged = [_judged_rounds(directory, n) for n in ("byzantine", "byzantine-2")]
    assert sorted(judged[0] + judged[1]) == list(range(1, ROBUST["rounds"] + 1)), judged


def _wait_for_split(directory: Path, stage: str, timeout_s: float = 60.0) -> None:
    names = (stage, f"{stage}-2")
    deadline = time.monotonic() + timeout_s
    while True:
        owned = [(_partitions_logged(directory, n) or ["-"])[-1].split(" (")[0]
                 for n in names]
        if sorted(owned) == ["[0, 1]", "[2, 3]"]:
            return
        assert time.monotonic() < deadline, owned
        time.sleep(0.2)


def _judged_rounds(directory: Path, name: str) -> list[int]:
    text = (directory / f"{name}.log").read_text(errors="replace")
    return [int(line.rsplit("round ", 1)[1].split(":")[0]) for line in text.splitlines()
            if ": judged job " in line]


def _kill_in_round(state: stack.StackState, job_box: list, number: int) -> None:
    """Background: kill -9 the second aggregator and byzantine replicas while round
    ``number`` collects."""

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
    for name in ("aggregator-2", "byzantine-2"):
        os.kill(state.services[name]["pid"], signal.SIGKILL)


def test_kill_9_of_one_replica_of_each_stage_mid_job_the_others_take_over(
        replicas, tmp_path):
    state, directory = replicas
    box: list = []
    killer = threading.Thread(target=_kill_in_round, args=(state, box, 2))
    killer.start()
    job_id = _submit(state.grpc, ROBUST)
    box.append(job_id)
    _fleet(state.grpc, job_id, ROBUST)
    killer.join(60)
    assert box[1:] == [RoundState.COLLECTING], "the replicas were not killed mid-job"
    assert _job(state.grpc, job_id).status == "COMPLETED"
    final, rounds, parts = asyncio.run(_final_model(state.database, job_id))
    _check_counted_once(rounds, parts, ROBUST, KEPT[ROBUST["name"]])
    assert np.max(np.abs(final - _embedded_final(tmp_path, ROBUST))) <= 1e-5
    # the survivors took the dead replicas' partitions over (they owned half before)
    for name in ("aggregator", "byzantine"):
        last = _partitions_logged(directory, name)[-1]
        assert last.startswith("[0, 1, 2, 3] (were [") and "(were [0, 1, 2, 3])" not in last
