"""Participant rows: a selected device's upload, late sightings and rejection."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection

from tsfl.storage.queries.audit import append_audits
from tsfl.storage.queries.common import now
from tsfl.storage.schema import participants, rounds
from tsfl.storage.states import StoreError

# Hot-path statements are built once: constructing SQLAlchemy expressions per call costs
# more than SQLite takes to run them.
_RECORD_UPLOAD = (update(participants).where(
    participants.c.job_id == bindparam("p_job"), participants.c.round == bindparam("p_round"),
    participants.c.client_id == bindparam("p_client"), participants.c.status == "selected",
).values(status="uploaded", num_examples=bindparam("n"), bytes_up=bindparam("b"),
         metrics=bindparam("m"), updated_at=bindparam("ts")))
_PARTICIPANT_STATUS = select(participants.c.status).where(
    participants.c.job_id == bindparam("p_job"), participants.c.round == bindparam("p_round"),
    participants.c.client_id == bindparam("p_client"))


def record_upload(conn: Connection, job_id: str, number: int, client_id: str,
                  num_examples: int, bytes_up: int, metrics: dict[str, float]) -> bool:
    key = {"p_job": job_id, "p_round": number, "p_client": client_id}
    res = conn.execute(_RECORD_UPLOAD, {**key, "n": num_examples, "b": bytes_up, "m": metrics,
                                        "ts": now()})
    if res.rowcount == 1:
        return True
    if conn.execute(_PARTICIPANT_STATUS, key).scalar() is None:
        raise StoreError(f"client {client_id!r} was not selected for round {number}")
    return False


def note_upload_seen(conn: Connection, job_id: str, number: int, client_id: str,
                     bytes_up: int) -> None:
    """A selected participant's update reached the server but was refused late (the round
    had closed, or moved on): its size is recorded, its status kept — under local DP the
    server saw a noised update all the same, and the ledger charges for it."""
    conn.execute(update(participants).where(
        participants.c.job_id == job_id, participants.c.round == number,
        participants.c.client_id == client_id, participants.c.bytes_up.is_(None),
    ).values(bytes_up=bytes_up, updated_at=now()))


def uploads_seen(conn: Connection, job_id: str, up_to: int) -> dict[str, int]:
    """Per client, the rounds ≤ ``up_to`` whose update of it reached the server."""
    rows = conn.execute(select(participants.c.client_id).where(
        participants.c.job_id == job_id, participants.c.round <= up_to,
        participants.c.bytes_up.is_not(None))).all()
    counts: dict[str, int] = {}
    for (client,) in rows:
        counts[client] = counts.get(client, 0) + 1
    return counts


def reject_participant(conn: Connection, job_id: str, number: int, client_id: str,
                       reason: str, actor: str) -> None:
    conn.execute(update(participants).where(
        participants.c.job_id == job_id, participants.c.round == number,
        participants.c.client_id == client_id,
    ).values(status="rejected", reason=reason, updated_at=now()))
    append_audits(conn, job_id, [("update.rejected", actor,
                                  {"round": number, "client_id": client_id, "reason": reason})])


def list_participants(conn: Connection, job_id: str, number: int | None
                      ) -> list[dict[str, Any]]:
    query = select(participants).where(participants.c.job_id == job_id)
    if number is not None:
        query = query.where(participants.c.round == number)
    rows = conn.execute(query.order_by(participants.c.round,
                                       participants.c.client_id)).mappings().all()
    return [dict(r) for r in rows]


def join_release(conn: Connection, job_id: str, number: int, client_id: str) -> bool:
    """An asynchronous (FedBuff) release has no cohort drawn up front: a device joins it
    as a selected participant when its update is accepted into it (the upload is then
    recorded as for any round), and the release's cohort size counts it. False, changing
    nothing, when it is a participant already."""
    present = conn.execute(_PARTICIPANT_STATUS, {"p_job": job_id, "p_round": number,
                                                 "p_client": client_id}).scalar()
    if present is not None:
        return False
    ts = now()
    conn.execute(insert(participants).values(job_id=job_id, round=number, client_id=client_id,
                                             status="selected", updated_at=ts))
    conn.execute(update(rounds).where(rounds.c.job_id == job_id, rounds.c.number == number)
                 .values(cohort_size=rounds.c.cohort_size + 1, updated_at=ts))
    return True
