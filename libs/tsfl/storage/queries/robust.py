"""The byzantine stage's rows: its verdicts on each participant, and the client
history it keeps between rounds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from tsfl.storage.queries.audit import append_audits
from tsfl.storage.queries.common import now
from tsfl.storage.schema import participants, robust_state


def record_verdicts(conn: Connection, job_id: str, number: int,
                    verdicts: Sequence[dict[str, Any]],
                    audits: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
    """Each verdict (client, weight, reason, scores) into its participant row (``score``:
    the weight; ``metrics.verdict``: the rest), with the audit events, in one transaction."""
    for v in verdicts:
        row = conn.execute(select(participants.c.id, participants.c.metrics).where(
            participants.c.job_id == job_id, participants.c.round == number,
            participants.c.client_id == v["client"])).first()
        if row is None:
            continue  # not a participant of this round (the aggregator refuses it)
        metrics = dict(row.metrics or {})
        metrics["verdict"] = {k: v[k] for k in ("weight", "scale", "reason", "scores")
                              if k in v}
        conn.execute(update(participants).where(participants.c.id == row.id).values(
            score=float(v["weight"]), metrics=metrics, updated_at=now()))
    if audits:
        append_audits(conn, job_id, audits)


def save_robust_state(conn: Connection, job_id: str, number: int, state: bytes) -> None:
    values = {"round": number, "state": state, "updated_at": now()}
    done = conn.execute(update(robust_state).where(robust_state.c.job_id == job_id)
                        .values(**values)).rowcount
    if not done:
        conn.execute(insert(robust_state).values(job_id=job_id, **values))


def load_robust_state(conn: Connection, job_id: str) -> tuple[int, bytes] | None:
    row = conn.execute(select(robust_state.c.round, robust_state.c.state)
                       .where(robust_state.c.job_id == job_id)).first()
    return (int(row.round), bytes(row.state)) if row else None
