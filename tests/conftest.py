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
