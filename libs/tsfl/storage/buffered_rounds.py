"""The store's side of asynchronous (FedBuff) releases: a release has no cohort drawn up
front, so a device joins it as a participant when its update is accepted into it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from tsfl.storage.schema import participants, rounds


def join_release(conn: Connection, job_id: str, number: int, client_id: str) -> bool:
    """Add ``client_id`` to release ``number`` as a selected participant (its upload is
    then recorded as for any round) and count it in the release's cohort size. False,
    changing nothing, when it is a participant already."""
    present = conn.execute(select(participants.c.status).where(
        participants.c.job_id == job_id, participants.c.round == number,
        participants.c.client_id == client_id)).first()
    if present is not None:
        return False
    ts = datetime.now(UTC).isoformat(timespec="microseconds")
    conn.execute(insert(participants).values(job_id=job_id, round=number, client_id=client_id,
                                             status="selected", updated_at=ts))
    conn.execute(update(rounds).where(rounds.c.job_id == job_id, rounds.c.number == number)
                 .values(cohort_size=rounds.c.cohort_size + 1, updated_at=ts))
    return True
