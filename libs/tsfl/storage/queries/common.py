"""What every query module shares: the rows' timestamp; and a table's row count."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from tsfl.storage.schema import (
    audit_events,
    checkpoints,
    devices,
    jobs,
    participants,
    privacy_ledger,
    robust_state,
    rounds,
)

TABLES = {"jobs": jobs, "rounds": rounds, "participants": participants,
          "checkpoints": checkpoints, "audit_events": audit_events, "devices": devices,
          "privacy_ledger": privacy_ledger, "robust_state": robust_state}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def count(conn: Connection, table_name: str) -> int:
    return int(conn.execute(select(func.count()).select_from(TABLES[table_name])).scalar()
               or 0)
