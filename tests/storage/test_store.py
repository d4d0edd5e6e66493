"""Persistence and migrations, on SQLite and on the local PostgreSQL alike."""

import asyncio

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import update

from tsfl.storage import RoundState, StoreError
from tsfl.storage import migrate as mig
from tsfl.storage.schema import audit_events, metadata


async def _job(store, job_id="j1", cohort=("a", "b", "c")):
    await store.create_job(job_id, "demo", {"name": "demo"}, "f" * 64, [{"name": "w"}])
    await store.open_round(job_id, 1, 0)
    await store.start_collecting(job_id, 1, list(cohort))


async def test_migrations_reach_head_and_match_the_model(store):
    assert await store.current_revision() == mig.head_revision()

    def diff(conn):
        return compare_metadata(MigrationContext.configure(conn), metadata)

    assert await store.run_in_transaction(diff) == []


async def test_downgrade_and_upgrade_again(store):
    await store.run_in_transaction(mig.downgrade_on, "base")
    assert await store.current_revision() is None
    await store.migrate()
    assert await store.current_revision() == mig.head_revision()
    assert await store.count("jobs") == 0


async def test_round_lifecycle_and_participants(store):
    await _job(store)
    assert (await store.get_round("j1", 1))["state"] == "COLLECTING"
    assert await store.record_upload("j1", 1, "a", num_examples=10, bytes_up=100, metrics={})
    assert await store.record_upload("j1", 1, "b", num_examples=5, bytes_up=100, metrics={})
    await store.transition_round("j1", 1, RoundState.CLOSING)
    await store.complete_round("j1", 1, accepted=["a"], rejected={"b": "nonfinite"},
                               dropped=["c"])
    r = await store.get_round("j1", 1)
    assert (r["state"], r["accepted"], r["rejected"]) == ("PUBLISHED", 1, 1)
    parts = {p["client_id"]: p for p in await store.list_participants("j1", 1)}
    assert parts["a"]["status"] == "accepted" and parts["a"]["num_examples"] == 10
    assert (parts["b"]["status"], parts["b"]["reason"]) == ("rejected", "nonfinite")
    assert parts["c"]["status"] == "dropped"
    kinds = [e["kind"] for e in await store.audit_trail("j1")]
    assert kinds == ["job.created", "round.open", "round.collecting", "round.closing",
                     "round.aggregated", "round.published"]


async def test_uploads_are_idempotent_per_job_round_client(store):
    await _job(store)
    assert await store.record_upload("j1", 1, "a", num_examples=1, bytes_up=1, metrics={})
    assert not await store.record_upload("j1", 1, "a", num_examples=1, bytes_up=1, metrics={})
    with pytest.raises(StoreError, match="not selected"):
        await store.record_upload("j1", 1, "zz", num_examples=1, bytes_up=1, metrics={})


async def test_illegal_transitions_are_refused(store):
    await _job(store)
    with pytest.raises(StoreError, match="illegal transition COLLECTING -> PUBLISHED"):
        await store.transition_round("j1", 1, RoundState.PUBLISHED)
    with pytest.raises(StoreError, match="does not exist"):
        await store.transition_round("j1", 9, RoundState.CLOSING)
    with pytest.raises(StoreError, match="already exists"):
        await store.open_round("j1", 1, 0)
    with pytest.raises(StoreError, match="already exists"):
        await store.create_job("j1", "demo", {}, "f" * 64)
    await store.transition_round("j1", 1, RoundState.FAILED, reason="too few updates")
    r = await store.get_round("j1", 1)
    assert (r["state"], r["reason"]) == ("FAILED", "too few updates")


async def test_checkpoints_with_strategy_state(store):
    await _job(store)
    vec = np.linspace(-1, 1, 1000).astype(np.float32)
    state = {"m": np.ones(1000, np.float32), "v": np.full(1000, 2, np.float32), "steps": 3}
    await store.save_checkpoint("j1", 0, 0, "d" * 16, vec * 0)
    await store.save_checkpoint("j1", 1, 1, "d" * 16, vec, state)
    ckpt = await store.latest_checkpoint("j1")
    assert ckpt["version"] == 1 and ckpt["round"] == 1
    np.testing.assert_array_equal(ckpt["vector"], vec)
    np.testing.assert_array_equal(ckpt["strategy_state"]["v"], state["v"])
    assert ckpt["strategy_state"]["steps"] == 3


async def test_audit_chain_detects_tampering_and_deletion(store):
    await _job(store)
    for i in range(5):
        await store.append_audit("j1", "note", {"i": i}, actor="test")
    assert await store.verify_audit("j1") == (True, "ok")

    def tamper(conn):
        conn.execute(update(audit_events).where(audit_events.c.job_id == "j1",
                                                audit_events.c.seq == 4)
                     .values(payload={"i": 999}))

    await store.run_in_transaction(tamper)
    ok, why = await store.verify_audit("j1")
    assert not ok and "seq 4" in why


async def test_audit_chain_detects_a_deleted_row(store):
    await _job(store)
    await store.append_audit("j1", "note", {"i": 1})

    def delete(conn):
        conn.execute(audit_events.delete().where(audit_events.c.job_id == "j1",
                                                 audit_events.c.seq == 1))

    await store.run_in_transaction(delete)
    ok, why = await store.verify_audit("j1")
    assert not ok and "deleted" in why


async def test_concurrent_audit_appends_never_fork_the_chain(store):
    import asyncio

    await _job(store)
    await asyncio.gather(*(store.append_audit("j1", "note", {"i": i}) for i in range(20)))
    trail = await store.audit_trail("j1")
    assert [e["seq"] for e in trail] == list(range(len(trail)))
    assert await store.verify_audit("j1") == (True, "ok")


async def test_unsupported_database_url():
    from tsfl.storage import Store

    with pytest.raises(StoreError, match="unsupported database"):
        await Store.open("mysql://localhost/x")


async def test_exclusive_sqlite_store_caches_audit_heads_safely(tmp_path):
    """The sole-writer cache of chain heads survives a rolled-back transaction."""
    from tsfl.storage import Store
    from tsfl.storage.queries.audit import append_audits

    store = await Store.open(f"sqlite:///{tmp_path / 'x.db'}", exclusive=True)
    try:
        await _job(store)
        await store.append_audit("j1", "note", {"i": 1})

        def append_then_fail(conn):
            append_audits(conn, "j1", [("doomed", "test", {})])
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await store.run_in_transaction(append_then_fail)
        await store.append_audit("j1", "note", {"i": 2})
        trail = await store.audit_trail("j1")
        assert [e["kind"] for e in trail][-2:] == ["note", "note"]
        assert await store.verify_audit("j1") == (True, "ok")
    finally:
        await store.close()


def test_sqlite_database_file_is_owner_only(tmp_path):
    """It holds token hashes, device ids and the audit trail: never world-readable."""
    import os
    import stat

    from tsfl.storage import Store

    async def go() -> None:
        store = await Store.open(f"sqlite:///{tmp_path / 'private.db'}")
        await store.close()

    os.chmod(tmp_path, 0o755)
    asyncio.run(go())
    assert stat.S_IMODE(os.stat(tmp_path / "private.db").st_mode) == 0o600


async def test_a_device_joins_an_asynchronous_release_once(store):
    await _job(store, cohort=())  # a FedBuff release: no cohort up front
    assert await store.join_release("j1", 1, "late")
    assert not await store.join_release("j1", 1, "late")  # already in it
    assert await store.record_upload("j1", 1, "late", num_examples=3, bytes_up=10, metrics={})
    assert not await store.record_upload("j1", 1, "late", num_examples=3, bytes_up=10,
                                         metrics={})
    assert (await store.get_round("j1", 1))["cohort_size"] == 1
    (part,) = await store.list_participants("j1", 1)
    assert (part["client_id"], part["status"]) == ("late", "uploaded")
