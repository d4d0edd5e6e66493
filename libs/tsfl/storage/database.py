"""One async transaction API over two engines: SQLite (embedded) runs in-process on a
synchronous connection — a thread hop per statement would cost more than the
statement; PostgreSQL (distributed) runs on asyncpg. :class:`Database` opens and
migrates the database and runs a query function in a read or a write transaction;
:class:`~tsfl.storage.store.Store` builds its API on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Self, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tsfl.storage import migrate
from tsfl.storage.queries.audit import AUDIT_HEADS, AUDIT_PENDING
from tsfl.storage.states import StoreError

T = TypeVar("T")


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


class Database:
    """Connections and transactions over one database (see the module docstring)."""

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
            self._conn.info[AUDIT_HEADS] = {}

    @property
    def dialect(self) -> str:
        engine = self._sync if self._sync is not None else self._async
        assert engine is not None
        return engine.dialect.name

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    async def open(cls, url: str, *, migrate_schema: bool = True, exclusive: bool = False,
                   **engine_kw: Any) -> Self:
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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _tx(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one write transaction."""
        if self._conn is not None:
            pending = self._conn.info.setdefault(AUDIT_PENDING, {})
            try:
                with self._conn.begin():
                    result = fn(self._conn, *args)
            except BaseException:
                pending.clear()
                raise
            heads = self._conn.info.get(AUDIT_HEADS)
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

    async def run_in_transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(sync_connection, *args)`` in a write transaction (tests, tools)."""
        return await self._tx(fn, *args)
