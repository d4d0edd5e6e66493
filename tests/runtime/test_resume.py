"""A restarted coordinator resumes every RUNNING job it can; one it cannot rebuild (a
spec naming a strategy no longer installed, say) fails alone instead of stopping the
others from resuming."""

from __future__ import annotations

import asyncio

import yaml
from sqlalchemy import update

from tsfl.pipeline.roles import LocalPipeline
from tsfl.runtime.jobs import JobManager
from tsfl.storage import Store
from tsfl.storage.schema import jobs as jobs_table

SPEC = {"name": "resume", "rounds": 3, "clients": {"count": 5, "per_round": 2},
        "model": {"kind": "logreg"}}


def test_a_job_that_cannot_be_rebuilt_fails_alone(tmp_path):
    db = f"sqlite:///{tmp_path / 'r.db'}"

    async def submit_two() -> tuple[str, str]:
        store = await Store.open(db)
        pipeline = await LocalPipeline.in_memory(store)
        manager = JobManager(pipeline.coordinator, registration_timeout_s=600)
        try:
            good = (await manager.submit(yaml.safe_dump(SPEC), "t")).job_id
            bad = (await manager.submit(yaml.safe_dump({**SPEC, "name": "b"}), "t")).job_id
        finally:
            await manager.stop()  # the service stops: both jobs stay RUNNING
            await pipeline.stop()

        def break_spec(conn) -> None:
            row = conn.execute(jobs_table.select().where(jobs_table.c.id == bad)).one()
            spec = {**row.spec, "strategy": {**row.spec["strategy"], "name": "uninstalled"}}
            conn.execute(update(jobs_table).where(jobs_table.c.id == bad).values(spec=spec))

        await store.run_in_transaction(break_spec)
        await store.close()
        return good, bad

    async def restart() -> tuple[list[str], dict[str, str]]:
        store = await Store.open(db)
        pipeline = await LocalPipeline.in_memory(store)
        manager = JobManager(pipeline.coordinator, registration_timeout_s=600)
        try:
            resumed = await manager.resume_all()
            return resumed, {r["id"]: r["status"] for r in await store.list_jobs()}
        finally:
            await manager.stop()
            await pipeline.stop()
            await store.close()

    good, bad = asyncio.run(submit_two())
    resumed, status = asyncio.run(restart())
    assert resumed == [good]
    assert status == {good: "RUNNING", bad: "FAILED"}
