"""Apply the Alembic migrations shipped in :mod:`tsfl.storage.migrations`."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "tsfl.storage:migrations")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


MIGRATION_LOCK = 0x75F1  # pg advisory lock key: one migrator at a time


def upgrade_on(connection: Connection, revision: str = "head") -> None:
    """Upgrade inside the caller's transaction. Services starting together on one
    PostgreSQL database queue on an advisory lock; SQLite's write lock does the same."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
    command.upgrade(alembic_config(connection), revision)


def downgrade_on(connection: Connection, revision: str) -> None:
    command.downgrade(alembic_config(connection), revision)


def current_on(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()
