"""examples/synthetic-async.yaml (FedBuff) through the six services: a real broker,
PostgreSQL and gRPC devices of uneven speed pulling the latest model whenever they are
free. Each release takes exactly ``buffer`` updates, each (release, device) counts once,
and slow devices' updates join later releases with their staleness."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from stack_helpers import fleet, job_info, submit

from tsfl.storage import Store

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "synthetic-async.yaml"


def _small_example() -> dict:
    job = yaml.safe_load(EXAMPLE.read_text())
    assert job["strategy"]["mode"] == "async"
    job["clients"] = {"count": 12, "per_round": 4}
    job["rounds"] = 4
    job["strategy"]["fedbuff"].update(buffer=4, concurrency=8, max_staleness=3)
    job["round"] = {"deadline_s": 120}
    return job


async def _records(database: str, job_id: str) -> tuple[list, list, list]:
    store = await Store.open(database)
    try:
        return (await store.list_rounds(job_id), await store.list_participants(job_id),
                await store.audit_trail(job_id))
    finally:
        await store.close()


def test_the_async_example_runs_through_the_services(services, database):
    state, _ = services
    job = _small_example()
    job_id = submit(state.grpc, job)
    contributed = fleet(state.grpc, job_id, job)
    assert job_info(state.grpc, job_id).status == "COMPLETED"
    rounds, parts, audit = asyncio.run(_records(database, job_id))
    assert [r["state"] for r in rounds] == ["PUBLISHED"] * 4
    assert all(r["accepted"] == 4 for r in rounds)
    accepted = [(p["round"], p["client_id"]) for p in parts if p["status"] == "accepted"]
    assert len(accepted) == len(set(accepted)) == 16 == sum(contributed)
    folded = [e["payload"] for e in audit if e["kind"] == "fedbuff.folded"]
    assert [f["round"] for f in folded] == [1, 2, 3, 4]
    assert all(0 <= s <= 3 for f in folded for s in f["staleness"])
