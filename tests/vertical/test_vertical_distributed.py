"""A vertical job on the distributed deployment: the six services over a real
Kafka-wire broker, the job submitted with `tsfl job submit`, its four parties enrolled
at the coordinator (three `run_party` threads, one `tsfl vertical party` process), the
result equal to the embedded run and the job's record in the store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading

import pytest
import yaml

from tsfl.api import resolve_spec
from tsfl.config import bundled_example
from tsfl.rpc.vertical_client import PartyClient
from tsfl.runtime import stack
from tsfl.runtime.broker import free_port, start_local_broker
from tsfl.runtime.vertical import job_salt, run_vertical
from tsfl.sdk.vertical import run_party
from tsfl.sim.vertical import vertical_tables
from tsfl.storage import Store

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
EPOCHS = 5


def tsfl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsfl.cli.main", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})  # untruncated tables


async def _record(database: str, job_id: str) -> tuple[dict, list, list]:
    store = await Store.open(database)
    try:
        return (await store.get_job(job_id), await store.list_rounds(job_id),
                await store.audit_trail(job_id))
    finally:
        await store.close()


@pytest.fixture
def services(tmp_path, monkeypatch):
    broker = start_local_broker()
    directory = tmp_path / "stack"
    try:
        state = stack.up(directory, kafka=broker.address, database=None,
                         grpc_port=free_port())
        monkeypatch.setenv("TSFL_ADMIN_TOKEN", state.admin_token)
        yield state
    finally:
        if (directory / "stack.json").exists():
            stack.down(directory)
        broker.stop()


def test_a_vertical_job_through_the_services_equals_the_embedded_run(services, tmp_path):
    state = services
    spec = resolve_spec(bundled_example("vertical-breast-cancer"), {"rounds": EPOCHS})
    embedded = run_vertical(spec, tmp_path / "embedded")
    job_file = tmp_path / "vertical.yaml"
    job_file.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
    sub = tsfl("job", "submit", str(job_file), "--coordinator", state.grpc, "--token", "enrol")
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    assert tsfl("vertical", "tables", str(job_file), "--out", str(tmp_path / "t")
                ).returncode == 0
    lab_c = subprocess.Popen(
        [sys.executable, "-m", "tsfl.cli.main", "vertical", "party", "--coordinator",
         state.grpc, "--job", job_id, "--token", "enrol", "--party", "lab-c",
         "--data", str(tmp_path / "t" / "lab-c.npz"), "--spec", str(job_file),
         "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tables = vertical_tables(spec)
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def party(name: str) -> None:
        try:
            with PartyClient(state.grpc, job_id, name, "enrol", spec=spec) as box:
                results[name] = run_party(box.spec, name, tables.parties[name], box,
                                          salt=job_salt(box.spec), test_ids=tables.test_ids,
                                          num_classes=box.num_classes, timeout=60)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=party, args=(n,)) for n in ("hospital", "lab-a",
                                                                    "lab-b")]
    for t in threads:
        t.start()
    out, err = lab_c.communicate(timeout=90)
    for t in threads:
        t.join(30)
    assert lab_c.returncode == 0 and not errors, (err[-2000:], errors)
    assert json.loads(out)["intersection"] == embedded.vertical["psi"]["intersection"]
    got = results["hospital"]["metrics"]
    assert len(got) == len(embedded.metrics) == EPOCHS
    for a, b in zip(got, embedded.metrics, strict=True):
        assert a["test_accuracy"] == b["test_accuracy"]
        assert a["test_loss"] == pytest.approx(b["test_loss"], abs=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
    status = {}
    for _ in range(50):  # the coordinator records the end the label party reported
        status = json.loads(tsfl("job", "status", job_id, "--coordinator", state.grpc).stdout)
        if status["status"] != "RUNNING":
            break
    assert (status["status"], status["rounds_done"], status["devices"]) == (
        "COMPLETED", EPOCHS, 4)
    assert status["test_accuracy"] == pytest.approx(got[-1]["test_accuracy"], abs=1e-6)
    rounds_cli = tsfl("job", "rounds", job_id, "--coordinator", state.grpc)
    assert rounds_cli.returncode == 0 and rounds_cli.stdout.count("PUBLISHED") == EPOCHS
    row, rounds, trail = asyncio.run(_record(state.database, job_id))
    assert row["status"] == "COMPLETED"
    for r, m in zip(rounds, got, strict=True):
        assert r["state"] == "PUBLISHED"
        assert r["metrics"]["test_accuracy"] == m["test_accuracy"]
        assert r["metrics"]["train_loss"] == pytest.approx(m["train_loss"], abs=1e-12)
    kinds = [e["kind"] for e in trail]
    assert kinds.count("vertical.psi") == 4 and kinds.count("vertical.epoch") == EPOCHS
    relayed = next(e["payload"] for e in trail if e["kind"] == "vertical.relayed")
    print("coordinator's view:", json.dumps(relayed))  # messages and bytes by kind
