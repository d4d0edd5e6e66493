"""The audit trail: each job's append-only, hash-chained events."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, insert, select, text
from sqlalchemy.engine import Connection

from tsfl.storage.queries.common import now
from tsfl.storage.schema import audit_events

GENESIS_HASH = "0" * 64
AUDIT_HEADS = "tsfl_audit_heads"      # Connection.info keys of the audit-head cache
AUDIT_PENDING = "tsfl_audit_pending"

# Hot-path statements are built once: constructing SQLAlchemy expressions per call costs
# more than SQLite takes to run them.
_AUDIT_HEAD = (select(audit_events.c.seq, audit_events.c.hash)
               .where(audit_events.c.job_id == bindparam("job_id"))
               .order_by(audit_events.c.seq.desc()).limit(1))
_AUDIT_INSERT = insert(audit_events)


def audit_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """sha256(prev_hash | canonical JSON of the row's content)."""
    body = json.dumps(
        {k: row[k] for k in ("job_id", "seq", "kind", "actor", "payload", "created_at")},
        sort_keys=True, separators=(",", ":"), default=str,
    )
    return hashlib.sha256(f"{prev_hash}|{body}".encode()).hexdigest()


def append_audits(conn: Connection, job_id: str,
                  entries: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
    """Append events to the job's hash chain inside the caller's transaction.

    Writers are serialised per job: a transaction-scoped advisory lock on
    PostgreSQL; SQLite has a single writer (its write lock is taken up front, see
    ``Store``). ``(job_id, seq)`` is unique besides, so the chain can never fork.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                     {"k": f"tsfl-audit:{job_id}"})
    heads = conn.info.get(AUDIT_HEADS)  # set only by a store that is the sole writer
    pending = conn.info.get(AUDIT_PENDING, {})  # this transaction's earlier appends
    if heads is not None and job_id in pending:
        seq, prev = pending[job_id]
    elif heads is not None and job_id in heads:
        seq, prev = heads[job_id]
    else:
        last = conn.execute(_AUDIT_HEAD, {"job_id": job_id}).first()
        seq = 0 if last is None else last.seq + 1
        prev = GENESIS_HASH if last is None else last.hash
    rows = []
    for kind, actor, payload in entries:
        row = {"job_id": job_id, "seq": seq, "kind": kind, "actor": actor,
               "payload": json.loads(json.dumps(payload, default=str)), "created_at": now()}
        row["prev_hash"] = prev
        row["hash"] = prev = audit_hash(prev, row)
        rows.append(row)
        seq += 1
    conn.execute(_AUDIT_INSERT, rows)
    if heads is not None:  # becomes the cached head when the transaction commits
        conn.info.setdefault(AUDIT_PENDING, {})[job_id] = (seq, prev)


def audit_trail(conn: Connection, job_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(select(audit_events).where(audit_events.c.job_id == job_id)
                        .order_by(audit_events.c.seq)).mappings().all()
    return [dict(r) for r in rows]
