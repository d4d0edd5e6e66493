"""The privacy ledger: each round's privacy charge, recorded once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from tsfl.storage.queries.audit import append_audits
from tsfl.storage.queries.common import now
from tsfl.storage.schema import privacy_ledger


def charge(conn: Connection, job_id: str, number: int, ledger: dict[str, Any]) -> None:
    """Charge round ``number`` (once: a second charge of the round changes nothing)."""
    exists = conn.execute(select(privacy_ledger.c.id).where(
        privacy_ledger.c.job_id == job_id, privacy_ledger.c.round == number)).first()
    if exists is None:
        conn.execute(insert(privacy_ledger).values(job_id=job_id, round=number,
                                                   created_at=now(), **ledger))


def charge_ledger(conn: Connection, job_id: str, number: int, ledger: dict[str, Any],
                  audits: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
    """A charge without a release (a withheld round whose inputs the server saw)."""
    charge(conn, job_id, number, ledger)
    if audits:
        append_audits(conn, job_id, audits)


def privacy_ledger_rows(conn: Connection, job_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(select(privacy_ledger).where(privacy_ledger.c.job_id == job_id)
                        .order_by(privacy_ledger.c.round)).mappings().all()
    return [dict(r) for r in rows]
