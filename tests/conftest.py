"""Shared fixtures: stores on SQLite and on the local PostgreSQL server."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from tsfl.storage import Store

PG_URL = os.environ.get("TSFL_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


async def _pg_reachable() -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"),
                                     timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def pg_available() -> bool:
    ok = asyncio.run(_pg_reachable())
    if not ok and os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI but {PG_URL} is not reachable")
    return ok


async def _pg_store(schema: str) -> Store:
    import asyncpg

    raw = PG_URL.replace("postgresql+asyncpg", "postgresql")
    conn = await asyncpg.connect(raw)
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.close()
    return await Store.open(PG_URL, connect_args={"server_settings": {"search_path": schema}})


async def _drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path, pg_available) -> AsyncIterator[Store]:
    """A migrated, empty store on each backend (a private schema on PostgreSQL)."""
    if request.param == "sqlite":
        s = await Store.open(f"sqlite:///{tmp_path / 'test.db'}")
        yield s
        await s.close()
        return
    if not pg_available:
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    schema = f"tsfl_test_{uuid.uuid4().hex[:10]}"
    s = await _pg_store(schema)
    try:
        yield s
    finally:
        await s.close()
        await _drop_schema(schema)


# -- a running stack: a Kafka-wire broker per module, a fresh database and the six services
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="module")
def broker():
    from tsfl.runtime.broker import start_local_broker

    b = start_local_broker()
    yield b
    b.stop()


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def database(pg_available):
    """A fresh PostgreSQL database for one stack, dropped afterwards."""
    if not pg_available:
        pytest.skip("PostgreSQL not reachable")
    name = f"tsfl_it_{uuid.uuid4().hex[:8]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def services(broker, database, tmp_path, monkeypatch):
    """``tsfl stack up`` on loopback: (its state, its directory); the operator token is in
    TSFL_ADMIN_TOKEN for the helpers and the CLI's subprocesses."""
    from tsfl.runtime import stack
    from tsfl.runtime.broker import free_port

    state = stack.up(tmp_path / "stack", kafka=broker.address, database=database,
                     grpc_port=free_port())
    monkeypatch.setenv("TSFL_ADMIN_TOKEN", state.admin_token)
    yield state, tmp_path / "stack"
    if (tmp_path / "stack" / "stack.json").exists():
        stack.down(tmp_path / "stack")
