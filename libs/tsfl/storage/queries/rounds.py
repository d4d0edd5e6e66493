"""Round rows: a round's lifecycle (checked against its allowed transitions), its
cohort and outcomes, and its metrics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Update, bindparam, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from tsfl.storage.queries.audit import append_audits
from tsfl.storage.queries.common import now
from tsfl.storage.schema import participants, rounds
from tsfl.storage.states import NEXT_STATES, RoundState, StoreError

# Hot-path statements are built once: constructing SQLAlchemy expressions per call costs
# more than SQLite takes to run them.
_PARTICIPANT_OUTCOME = (update(participants).where(
    participants.c.job_id == bindparam("p_job"), participants.c.round == bindparam("p_round"),
    participants.c.client_id == bindparam("p_client"),
).values(status=bindparam("st"), reason=bindparam("why"), updated_at=bindparam("ts")))
_ROUND_INSERT = insert(rounds)
_PARTICIPANT_INSERT = insert(participants)
_ROUND_WHERE = (rounds.c.job_id == bindparam("r_job"), rounds.c.number == bindparam("r_num"))
_ROUND_STATE = select(rounds.c.state).where(*_ROUND_WHERE)
_ROUND_METRICS = update(rounds).where(*_ROUND_WHERE).values(metrics=bindparam("m"),
                                                           updated_at=bindparam("ts"))
_TRANSITIONS: dict[RoundState, Update] = {
    new: update(rounds).where(
        *_ROUND_WHERE, rounds.c.state.in_([s.value for s, nx in NEXT_STATES.items()
                                           if new in nx]))
    for new in RoundState if new is not RoundState.OPEN
}


def open_round(conn: Connection, job_id: str, number: int, model_version: int) -> None:
    """Create round ``number`` in state OPEN (its cohort is not chosen yet)."""
    ts = now()
    try:
        with conn.begin_nested():
            conn.execute(_ROUND_INSERT, {
                "job_id": job_id, "number": number, "state": RoundState.OPEN.value,
                "model_version": model_version, "cohort_size": 0,
                "opened_at": ts, "updated_at": ts})
    except IntegrityError:
        raise StoreError(f"round {number} of job {job_id!r} already exists") from None
    append_audits(conn, job_id, [("round.open", "coordinator",
                                  {"round": number, "model_version": model_version})])


def start_collecting(conn: Connection, job_id: str, number: int, cohort: Sequence[str],
                     population: int | None = None) -> None:
    """Record the selected cohort (and the population it was drawn from) and move the
    round OPEN -> COLLECTING."""
    ts = now()
    entry = _set_state(conn, job_id, number, RoundState.COLLECTING, cohort_size=len(cohort),
                       population=population)
    if cohort:
        conn.execute(_PARTICIPANT_INSERT, [
            {"job_id": job_id, "round": number, "client_id": c, "status": "selected",
             "updated_at": ts} for c in cohort])
    entry[2]["cohort_size"] = len(cohort)
    if population is not None:
        entry[2]["population"] = population
    append_audits(conn, job_id, [entry])


def _set_state(conn: Connection, job_id: str, number: int, new: RoundState,
               reason: str | None = None, **extra: Any) -> tuple[str, str, dict[str, Any]]:
    """Move the round to ``new`` if the lifecycle allows it; return its audit entry."""
    values: dict[str, Any] = {"state": new.value, "updated_at": now(), **extra}
    if reason is not None:
        values["reason"] = reason
    key = {"r_job": job_id, "r_num": number}
    res = conn.execute(_TRANSITIONS[new].values(**values), key)
    if res.rowcount != 1:
        current = conn.execute(_ROUND_STATE, key).scalar()
        if current is None:
            raise StoreError(f"round {number} of job {job_id!r} does not exist")
        raise StoreError(f"round {number}: illegal transition {current} -> {new.value}")
    payload: dict[str, Any] = {"round": number, "to": new.value}
    if reason:
        payload["reason"] = reason
    return (f"round.{new.value.lower()}", "coordinator", payload)


def transition_round(conn: Connection, job_id: str, number: int, new: RoundState,
                     reason: str | None = None) -> None:
    append_audits(conn, job_id, [_set_state(conn, job_id, number, new, reason)])


def complete_round(conn: Connection, job_id: str, number: int, accepted: Iterable[str],
                   rejected: dict[str, str], dropped: Iterable[str], publish: bool) -> None:
    """CLOSING -> AGGREGATED with every participant's outcome (-> PUBLISHED)."""
    accepted, dropped = list(accepted), list(dropped)
    ts = now()
    audit = [_set_state(conn, job_id, number, RoundState.AGGREGATED,
                        accepted=len(accepted), rejected=len(rejected))]
    outcomes = ([(c, "accepted", None) for c in accepted]
                + [(c, "rejected", why) for c, why in rejected.items()]
                + [(c, "dropped", "no update before the round closed") for c in dropped])
    if outcomes:
        conn.execute(_PARTICIPANT_OUTCOME, [
            {"p_job": job_id, "p_round": number, "p_client": c, "st": st, "why": why, "ts": ts}
            for c, st, why in outcomes])
    if publish:
        audit.append(_set_state(conn, job_id, number, RoundState.PUBLISHED))
    append_audits(conn, job_id, audit)


def set_rounds_metrics(conn: Connection, job_id: str,
                       metrics: dict[int, dict[str, Any]]) -> None:
    ts = now()
    if metrics:
        conn.execute(_ROUND_METRICS, [{"r_job": job_id, "r_num": n, "m": m, "ts": ts}
                                      for n, m in metrics.items()])


def set_round_metrics(conn: Connection, job_id: str, number: int,
                      metrics: dict[str, Any]) -> None:
    conn.execute(_ROUND_METRICS, {"r_job": job_id, "r_num": number, "m": metrics, "ts": now()})


def get_round(conn: Connection, job_id: str, number: int) -> dict[str, Any] | None:
    row = conn.execute(select(rounds).where(rounds.c.job_id == job_id,
                                            rounds.c.number == number)).mappings().first()
    return dict(row) if row else None


def list_rounds(conn: Connection, job_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(select(rounds).where(rounds.c.job_id == job_id)
                        .order_by(rounds.c.number)).mappings().all()
    return [dict(r) for r in rows]
