"""Admin identities: their token rows (salted hashes and roles), issued and revoked."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from tsfl.storage.queries.common import now
from tsfl.storage.schema import admin_tokens


def add_admin_token(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(insert(admin_tokens).values(created_at=now(), **row))


def admin_token(conn: Connection, token_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(admin_tokens).where(admin_tokens.c.id == token_id)
                       ).mappings().first()
    return dict(row) if row is not None else None


def revoke_admin_token(conn: Connection, token_id: str) -> bool:
    res = conn.execute(update(admin_tokens).where(
        admin_tokens.c.id == token_id, admin_tokens.c.revoked_at.is_(None)
    ).values(revoked_at=now()))
    return res.rowcount == 1
