"""The store: jobs, rounds, participants, checkpoints and the audit trail.

One async API over two engines. SQLite (embedded) runs in-process on a
synchronous connection — a thread hop per statement would cost more than the
statement; PostgreSQL (distributed) runs on asyncpg. Both execute the same
functions from :mod:`tsfl.storage.queries`.

Round transitions are checked against the lifecycle and persisted before anyone
announces them. The audit trail is append-only and hash-chained per job: each row
carries the hash of the previous one, so editing or deleting a row is detectable
(:meth:`Store.verify_audit`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import numpy as np
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tsfl.storage import migrate
from tsfl.storage import queries as q
from tsfl.storage.rows import (
    AuditRow,
    CheckpointRow,
    DeviceRow,
    JobRow,
    ParticipantRow,
    RoundRow,
)
from tsfl.storage.states import RoundState, StoreError

T = TypeVar("T")

__all__ = ["RoundState", "Store", "StoreError"]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, emit BEGIN (so SAVEPOINTs work), and take the
    # write lock up front: a transaction never has to upgrade a read lock.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")



def _private_sqlite_files(database: str | None) -> None:
    """Create a SQLite database readable by its owner only (it holds session-token
    hashes, the audit trail and every device id); SQLite gives its -wal and -shm files
    the database file's mode."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        fd = os.open(database, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:  # its directory does not exist: sqlite will say so
        return
    os.close(fd)
    os.chmod(database, 0o600)

class Store:
    """Async repository over one database (see the module docstring)."""

    def __init__(self, *, sync_engine: Engine | None = None,
                 async_engine: AsyncEngine | None = None, exclusive: bool = False):
        if (sync_engine is None) == (async_engine is None):
            raise ValueError("give exactly one of sync_engine, async_engine")
        self._sync = sync_engine
        self._async = async_engine
        # SQLite: one connection for the store's lifetime. Calls come from one event loop
        # thread and never interleave (each runs to completion without awaiting), and a
        # pool checkout per transaction costs more than the statements.
        self._conn: Connection | None = sync_engine.connect() if sync_engine else None
        if exclusive and self._conn is not None:
            # The sole writer of this SQLite file may remember each audit chain's head
            # instead of reading it back in every transaction.
            self._conn.info[q.AUDIT_HEADS] = {}

    @property
    def dialect(self) -> str:
        engine = self._sync if self._sync is not None else self._async
        assert engine is not None
        return engine.dialect.name

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    async def open(cls, url: str, *, migrate_schema: bool = True, exclusive: bool = False,
                   **engine_kw: Any) -> Store:
        """Connect and bring the schema to the latest migration.

        ``url``: ``sqlite:///path`` (``sqlite+aiosqlite://`` is accepted too) or
        ``postgresql+asyncpg://user@host/db``. ``exclusive``: this process is the only
        writer of a SQLite file (the embedded run), so small read-backs may be cached.
        """
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            _private_sqlite_files(parsed.database)
            engine = create_engine(parsed.set(drivername="sqlite+pysqlite"), **engine_kw)
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", _sqlite_begin)
            store = cls(sync_engine=engine, exclusive=exclusive)
        elif parsed.get_backend_name() == "postgresql":
            if parsed.get_driver_name() != "asyncpg":
                parsed = parsed.set(drivername="postgresql+asyncpg")
            store = cls(async_engine=create_async_engine(parsed, **engine_kw))
        else:
            raise StoreError(f"unsupported database {parsed.get_backend_name()!r}; "
                             "use sqlite:///FILE or postgresql+asyncpg://...")
        if migrate_schema:
            await store.migrate()
        return store

    async def migrate(self, revision: str = "head") -> None:
        await self._tx(migrate.upgrade_on, revision)

    async def current_revision(self) -> str | None:
        return await self._read(migrate.current_on)

    async def close(self) -> None:
        if self._sync is not None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._sync.dispose()
        else:
            assert self._async is not None
            await self._async.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _tx(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one write transaction."""
        if self._conn is not None:
            pending = self._conn.info.setdefault(q.AUDIT_PENDING, {})
            try:
                with self._conn.begin():
                    result = fn(self._conn, *args)
            except BaseException:
                pending.clear()
                raise
            heads = self._conn.info.get(q.AUDIT_HEADS)
            if heads is not None:
                heads.update(pending)
            pending.clear()
            return result
        assert self._async is not None
        async with self._async.begin() as aconn:
            return await aconn.run_sync(fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        if self._conn is not None:
            with self._conn.begin():  # never leave a read transaction open
                return fn(self._conn, *args)
        assert self._async is not None
        async with self._async.connect() as aconn:
            return await aconn.run_sync(fn, *args)

    # -- jobs ------------------------------------------------------------------------------
    async def create_job(self, job_id: str, name: str, spec: dict[str, Any], spec_sha256: str,
                         layout: list[dict[str, Any]] | None = None,
                         enrollment_hash: str | None = None, owner: str | None = None) -> None:
        await self._tx(q.create_job, job_id, name, spec, spec_sha256, layout, enrollment_hash,
                       owner)

    async def set_job_key(self, job_id: str, spec: dict[str, Any], spec_sha256: str,
                          details: dict[str, Any]) -> None:
        """A threshold-HE job's spec once its silos' key ceremony named the key (its key
        id filled in), audited as ``he.key.created`` with ``details``, in one
        transaction."""
        await self._tx(q.set_job_key, job_id, spec, spec_sha256, details)

    # -- admin identities --------------------------------------------------------------------
    async def add_admin_token(self, row: dict[str, Any]) -> None:
        await self._tx(q.add_admin_token, row)

    async def admin_token(self, token_id: str) -> dict[str, Any] | None:
        return await self._read(q.admin_token, token_id)

    async def revoke_admin_token(self, token_id: str) -> bool:
        return await self._tx(q.revoke_admin_token, token_id)

    async def finish_job(self, job_id: str, status: str, reason: str | None = None) -> None:
        await self._tx(q.finish_job, job_id, status, reason)

    async def get_job(self, job_id: str) -> JobRow | None:
        return cast("JobRow | None", await self._read(q.get_job, job_id))

    # -- rounds ----------------------------------------------------------------------------
    async def open_round(self, job_id: str, number: int, model_version: int) -> None:
        """Create round ``number`` in state OPEN (before it is announced)."""
        await self._tx(q.open_round, job_id, number, model_version)

    async def start_collecting(self, job_id: str, number: int, cohort: Sequence[str],
                               population: int | None = None) -> None:
        """Record the cohort and move the round OPEN -> COLLECTING (one transaction)."""
        await self._tx(q.start_collecting, job_id, number, list(cohort), population)

    async def transition_round(self, job_id: str, number: int, new: RoundState, *,
                               reason: str | None = None) -> None:
        """Move a round along its lifecycle; illegal moves raise :class:`StoreError`."""
        await self._tx(q.transition_round, job_id, number, new, reason)

    async def complete_round(self, job_id: str, number: int, *, accepted: Iterable[str],
                             rejected: dict[str, str], dropped: Iterable[str],
                             publish: bool = True) -> None:
        """CLOSING -> AGGREGATED (with each participant's outcome) -> PUBLISHED."""
        await self._tx(q.complete_round, job_id, number, list(accepted), dict(rejected),
                       list(dropped), publish)

    async def set_rounds_metrics(self, job_id: str, metrics: dict[int, dict[str, Any]]) -> None:
        """Several rounds' metrics in one transaction."""
        await self._tx(q.set_rounds_metrics, job_id, metrics)

    async def set_round_metrics(self, job_id: str, number: int,
                                metrics: dict[str, Any]) -> None:
        await self._tx(q.set_round_metrics, job_id, number, metrics)

    async def get_round(self, job_id: str, number: int) -> RoundRow | None:
        return cast("RoundRow | None", await self._read(q.get_round, job_id, number))

    async def list_rounds(self, job_id: str) -> list[RoundRow]:
        return cast("list[RoundRow]", await self._read(q.list_rounds, job_id))

    # -- participants ----------------------------------------------------------------------
    async def record_upload(self, job_id: str, number: int, client_id: str, *,
                            num_examples: int, bytes_up: int,
                            metrics: dict[str, float]) -> bool:
        """Mark a selected client's update as received.

        Returns ``False`` (changing nothing) if this (job, round, client) already
        uploaded, so a replayed or duplicated upload never counts twice; raises
        :class:`StoreError` if the client was not selected for the round.
        """
        if self._conn is not None:  # SQLite: the per-update hot path, straight to the driver
            return self._record_upload_sqlite(job_id, number, client_id, num_examples,
                                              bytes_up, metrics)
        return await self._tx(q.record_upload, job_id, number, client_id, num_examples,
                              bytes_up, metrics)

    _SQLITE_RECORD_UPLOAD = (
        "UPDATE participants SET status = 'uploaded', num_examples = ?, bytes_up = ?, "
        "metrics = ?, updated_at = ? WHERE job_id = ? AND round = ? AND client_id = ? "
        "AND status = 'selected'")

    def _record_upload_sqlite(self, job_id: str, number: int, client_id: str,
                              num_examples: int, bytes_up: int,
                              metrics: dict[str, float]) -> bool:
        """:func:`queries.record_upload` on the raw sqlite3 connection.

        One statement per device update: SQLAlchemy's per-statement work costs ~8× the
        statement here. Same SQL, same semantics; the SQLite store tests cover it.
        """
        assert self._conn is not None
        if self._conn.in_transaction():
            raise StoreError("record_upload called inside another transaction")
        raw = self._conn.connection.driver_connection
        raw.execute("BEGIN IMMEDIATE")
        try:
            cur = raw.execute(self._SQLITE_RECORD_UPLOAD, (
                num_examples, bytes_up, json.dumps(metrics), q.now(), job_id, number, client_id))
            fresh = cur.rowcount == 1
            status = None if fresh else raw.execute(
                "SELECT status FROM participants WHERE job_id = ? AND round = ? "
                "AND client_id = ?", (job_id, number, client_id)).fetchone()
        except BaseException:
            raw.execute("ROLLBACK")
            raise
        raw.execute("COMMIT")
        if not fresh and status is None:
            raise StoreError(f"client {client_id!r} was not selected for round {number}")
        return fresh

    async def note_upload_seen(self, job_id: str, number: int, client_id: str,
                               bytes_up: int) -> None:
        await self._tx(q.note_upload_seen, job_id, number, client_id, bytes_up)

    async def uploads_seen(self, job_id: str, up_to: int) -> dict[str, int]:
        """Per client, how many rounds ≤ ``up_to`` delivered its update to the server."""
        return await self._read(q.uploads_seen, job_id, up_to)

    async def reject_participant(self, job_id: str, number: int, client_id: str, reason: str,
                                 actor: str = "coordinator") -> None:
        await self._tx(q.reject_participant, job_id, number, client_id, reason, actor)

    async def list_participants(self, job_id: str, number: int | None = None
                                ) -> list[ParticipantRow]:
        return cast("list[ParticipantRow]",
                    await self._read(q.list_participants, job_id, number))

    # -- checkpoints -----------------------------------------------------------------------
    async def save_checkpoint(self, job_id: str, version: int, number: int, layout_digest: str,
                              vector: np.ndarray,
                              strategy_state: dict[str, Any] | None = None) -> None:
        await self._tx(q.save_checkpoint, job_id, version, number, layout_digest, vector,
                       strategy_state)

    async def latest_checkpoint(self, job_id: str, version: int | None = None
                                ) -> CheckpointRow | None:
        """The newest checkpoint (or the one of ``version``): vector, strategy state..."""
        return cast("CheckpointRow | None",
                    await self._read(q.latest_checkpoint, job_id, version))

    async def latest_checkpoint_meta(self, job_id: str) -> tuple[int, int] | None:
        """(version, round) of the newest checkpoint."""
        return await self._read(q.latest_checkpoint_meta, job_id)

    async def release_model(self, job_id: str, version: int, number: int, layout_digest: str,
                            vector: np.ndarray, strategy_state: dict[str, Any] | None, *,
                            ledger: dict[str, Any] | None = None,
                            audits: Sequence[tuple[str, str, dict[str, Any]]] = (),
                            sealed: bytes | None = None,
                            outcome: dict[str, Any] | None = None) -> None:
        """Ledger charge + checkpoint (with an HE job's encrypted part and the round's
        outcome, which is never released) + audit events, atomically."""
        await self._tx(q.release_model, job_id, version, number, layout_digest, vector,
                       strategy_state, ledger, list(audits), sealed, outcome)

    async def charge_ledger(self, job_id: str, number: int, ledger: dict[str, Any],
                            audits: Sequence[tuple[str, str, dict[str, Any]]] = ()) -> None:
        """Charge round ``number`` without releasing anything (idempotent by round)."""
        await self._tx(q.charge_ledger, job_id, number, ledger, list(audits))

    async def checkpoint_outcome(self, job_id: str, version: int) -> dict[str, Any] | None:
        return await self._read(q.checkpoint_outcome, job_id, version)

    async def privacy_ledger(self, job_id: str) -> list[dict[str, Any]]:
        return await self._read(q.privacy_ledger_rows, job_id)

    # -- robust aggregation ------------------------------------------------------------------
    async def record_verdicts(self, job_id: str, number: int,
                              verdicts: Sequence[dict[str, Any]],
                              audits: Sequence[tuple[str, str, dict[str, Any]]] = ()) -> None:
        await self._tx(q.record_verdicts, job_id, number, list(verdicts), list(audits))

    async def save_robust_state(self, job_id: str, number: int, state: bytes) -> None:
        """The byzantine stage's client history as it stands before round ``number``."""
        await self._tx(q.save_robust_state, job_id, number, state)

    async def load_robust_state(self, job_id: str) -> tuple[int, bytes] | None:
        return await self._read(q.load_robust_state, job_id)

    # -- audit -----------------------------------------------------------------------------
    async def append_audit(self, job_id: str, kind: str, payload: dict[str, Any],
                           actor: str = "coordinator") -> None:
        await self._tx(q.append_audits, job_id, [(kind, actor, payload)])

    async def audit_trail(self, job_id: str) -> list[AuditRow]:
        return cast("list[AuditRow]", await self._read(q.audit_trail, job_id))

    async def verify_audit(self, job_id: str) -> tuple[bool, str]:
        """Recompute the chain; ``(False, why)`` names the first broken row."""
        prev = q.GENESIS_HASH
        for expected_seq, row in enumerate(await self.audit_trail(job_id)):
            if row["seq"] != expected_seq:
                return False, f"row seq {row['seq']} where {expected_seq} was expected (deleted?)"
            if row["prev_hash"] != prev:
                return False, f"row seq {row['seq']}: prev_hash does not match the previous row"
            if q.audit_hash(prev, row) != row["hash"]:
                return False, f"row seq {row['seq']}: content does not match its hash"
            prev = row["hash"]
        return True, "ok"

    # -- devices ---------------------------------------------------------------------------
    async def register_device(self, job_id: str, device_id: str, token_hash: str,
                              traits: dict[str, Any] | None = None) -> bool:
        return await self._tx(q.register_device, job_id, device_id, token_hash, traits or {})

    async def touch_device(self, job_id: str, device_id: str,
                           traits: dict[str, Any] | None = None) -> None:
        await self._tx(q.touch_device, job_id, device_id, traits)

    async def list_devices(self, job_id: str) -> list[DeviceRow]:
        return cast("list[DeviceRow]", await self._read(q.list_devices, job_id))

    async def list_device_ids(self, job_id: str) -> list[str]:
        """The job's registered device ids, in order."""
        return await self._read(q.list_device_ids, job_id)

    async def count_devices(self, job_id: str) -> int:
        """How many devices the job has registered (one COUNT, no rows read)."""
        return await self._read(q.count_devices, job_id)

    async def device_token_hash(self, job_id: str, device_id: str) -> str | None:
        return await self._read(q.device_token_hash, job_id, device_id)

    async def list_jobs(self, status: str | None = None) -> list[JobRow]:
        return cast("list[JobRow]", await self._read(q.list_jobs, status))

    async def count(self, table_name: str) -> int:
        return await self._read(q.count, table_name)

    async def run_in_transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(sync_connection, *args)`` in a write transaction (tests, tools)."""
        return await self._tx(fn, *args)
