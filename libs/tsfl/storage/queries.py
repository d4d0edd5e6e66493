"""The SQL of the store, as plain functions over a synchronous connection.

:class:`~tsfl.storage.store.Store` runs them directly on SQLite (in-process, no
thread hop) and through ``AsyncConnection.run_sync`` on PostgreSQL (asyncpg), so
both deployments execute the very same statements.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgpack
import numpy as np
from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from tsfl.storage.schema import (
    admin_tokens,
    audit_events,
    checkpoints,
    devices,
    jobs,
    participants,
    privacy_ledger,
    robust_state,
    rounds,
)
from tsfl.storage.states import NEXT_STATES, RoundState, StoreError

GENESIS_HASH = "0" * 64
AUDIT_HEADS = "tsfl_audit_heads"      # Connection.info keys of the audit-head cache
AUDIT_PENDING = "tsfl_audit_pending"
TABLES = {"jobs": jobs, "rounds": rounds, "participants": participants,
          "checkpoints": checkpoints, "audit_events": audit_events, "devices": devices,
          "privacy_ledger": privacy_ledger, "robust_state": robust_state}


# Hot-path statements are built once: constructing SQLAlchemy expressions per call costs
# more than SQLite takes to run them.
_AUDIT_HEAD = (select(audit_events.c.seq, audit_events.c.hash)
               .where(audit_events.c.job_id == bindparam("job_id"))
               .order_by(audit_events.c.seq.desc()).limit(1))
_AUDIT_INSERT = insert(audit_events)
_RECORD_UPLOAD = (update(participants).where(
    participants.c.job_id == bindparam("p_job"), participants.c.round == bindparam("p_round"),
    participants.c.client_id == bindparam("p_client"), participants.c.status == "selected",
).values(status="uploaded", num_examples=bindparam("n"), bytes_up=bindparam("b"),
         metrics=bindparam("m"), updated_at=bindparam("ts")))
_PARTICIPANT_STATUS = select(participants.c.status).where(
    participants.c.job_id == bindparam("p_job"), participants.c.round == bindparam("p_round"),
    participants.c.client_id == bindparam("p_client"))
_PARTICIPANT_OUTCOME = (update(participants).where(
    participants.c.job_id == bindparam("p_job"), participants.c.round == bindparam("p_round"),
    participants.c.client_id == bindparam("p_client"),
).values(status=bindparam("st"), reason=bindparam("why"), updated_at=bindparam("ts")))
_DEVICE_IDS = (select(devices.c.device_id).where(devices.c.job_id == bindparam("d_job"))
               .order_by(devices.c.device_id))
_DEVICE_COUNT = (select(func.count()).select_from(devices)
                 .where(devices.c.job_id == bindparam("d_job")))
_ROUND_INSERT = insert(rounds)
_PARTICIPANT_INSERT = insert(participants)
_CHECKPOINT_INSERT = insert(checkpoints)
_LATEST_CHECKPOINT = (select(checkpoints).where(checkpoints.c.job_id == bindparam("c_job"))
                      .order_by(checkpoints.c.version.desc()).limit(1))
_ROUND_WHERE = (rounds.c.job_id == bindparam("r_job"), rounds.c.number == bindparam("r_num"))
_ROUND_STATE = select(rounds.c.state).where(*_ROUND_WHERE)
_ROUND_METRICS = update(rounds).where(*_ROUND_WHERE).values(metrics=bindparam("m"),
                                                           updated_at=bindparam("ts"))
_TRANSITIONS = {
    new: update(rounds).where(
        *_ROUND_WHERE, rounds.c.state.in_([s.value for s, nx in NEXT_STATES.items()
                                           if new in nx]))
    for new in RoundState if new is not RoundState.OPEN
}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


# -- audit -----------------------------------------------------------------------------------
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


# -- jobs ------------------------------------------------------------------------------------
def create_job(conn: Connection, job_id: str, name: str, spec: dict[str, Any],
               spec_sha256: str, layout: list[dict[str, Any]] | None,
               enrollment_hash: str | None = None, owner: str | None = None) -> None:
    ts = now()
    try:
        with conn.begin_nested():
            conn.execute(insert(jobs).values(
                id=job_id, name=name, spec=spec, spec_sha256=spec_sha256, status="RUNNING",
                layout=layout, created_at=ts, updated_at=ts, enrollment_hash=enrollment_hash,
                owner=owner))
    except IntegrityError:
        raise StoreError(f"job {job_id!r} already exists") from None
    append_audits(conn, job_id, [("job.created", f"admin:{owner}" if owner else "coordinator",
                                  {"name": name, "spec_sha256": spec_sha256})])


def set_job_key(conn: Connection, job_id: str, spec: dict[str, Any], spec_sha256: str,
                details: dict[str, Any]) -> None:
    res = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "RUNNING")
                       .values(spec=spec, spec_sha256=spec_sha256, updated_at=now()))
    if res.rowcount != 1:
        raise StoreError(f"no running job {job_id!r}")
    append_audits(conn, job_id, [("he.key.created", "coordinator",
                                  {**details, "spec_sha256": spec_sha256})])


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


def finish_job(conn: Connection, job_id: str, status: str, reason: str | None) -> None:
    res = conn.execute(update(jobs).where(jobs.c.id == job_id)
                       .values(status=status, reason=reason, updated_at=now()))
    if res.rowcount != 1:
        raise StoreError(f"unknown job {job_id!r}")
    append_audits(conn, job_id, [(f"job.{status.lower()}", "coordinator", {"reason": reason})])


def get_job(conn: Connection, job_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
    return dict(row) if row else None


# -- rounds ----------------------------------------------------------------------------------
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


# -- participants ----------------------------------------------------------------------------
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


# -- checkpoints -----------------------------------------------------------------------------
def save_checkpoint(conn: Connection, job_id: str, version: int, number: int,
                    layout_digest: str, vector: np.ndarray,
                    strategy_state: dict[str, Any] | None, sealed: bytes | None = None,
                    outcome: dict[str, Any] | None = None) -> None:
    conn.execute(_CHECKPOINT_INSERT, {
        "job_id": job_id, "version": version, "round": number, "layout_digest": layout_digest,
        "vector": np.ascontiguousarray(vector, "<f4").tobytes(),
        "strategy_state": pack_state(strategy_state) if strategy_state else None,
        "created_at": now(), "sealed": sealed, "outcome": outcome})


def checkpoint_outcome(conn: Connection, job_id: str, version: int) -> dict[str, Any] | None:
    """The round outcome stored with the checkpoint of ``version`` (operators' view)."""
    row = conn.execute(select(checkpoints.c.outcome).where(
        checkpoints.c.job_id == job_id, checkpoints.c.version == version)).first()
    return dict(row[0]) if row is not None and row[0] is not None else None


def latest_checkpoint(conn: Connection, job_id: str, version: int | None = None
                      ) -> dict[str, Any] | None:
    """The newest checkpoint, or the one of ``version``."""
    if version is None:
        row = conn.execute(_LATEST_CHECKPOINT, {"c_job": job_id}).mappings().first()
    else:
        row = conn.execute(select(checkpoints).where(
            checkpoints.c.job_id == job_id, checkpoints.c.version == version)).mappings().first()
    if row is None:
        return None
    out = dict(row)
    out["vector"] = np.frombuffer(out["vector"], dtype="<f4").copy()
    out["strategy_state"] = unpack_state(out["strategy_state"])
    return out


_LATEST_CHECKPOINT_META = (select(checkpoints.c.version, checkpoints.c.round)
                           .where(checkpoints.c.job_id == bindparam("c_job"))
                           .order_by(checkpoints.c.version.desc()).limit(1))


def latest_checkpoint_meta(conn: Connection, job_id: str) -> tuple[int, int] | None:
    """(version, round) of the newest checkpoint, without reading the vector."""
    row = conn.execute(_LATEST_CHECKPOINT_META, {"c_job": job_id}).first()
    return (int(row[0]), int(row[1])) if row else None


def release_model(conn: Connection, job_id: str, version: int, number: int,
                  layout_digest: str, vector: np.ndarray, strategy_state: dict[str, Any] | None,
                  ledger: dict[str, Any] | None,
                  audits: Sequence[tuple[str, str, dict[str, Any]]],
                  sealed: bytes | None = None, outcome: dict[str, Any] | None = None) -> None:
    """Charge the privacy ledger (if any), checkpoint the released model and audit both,
    in one transaction: a model is never stored as released without its charge."""
    if ledger is not None:
        _charge(conn, job_id, number, ledger)
    save_checkpoint(conn, job_id, version, number, layout_digest, vector, strategy_state,
                    sealed, outcome)
    if audits:
        append_audits(conn, job_id, audits)


def _charge(conn: Connection, job_id: str, number: int, ledger: dict[str, Any]) -> None:
    exists = conn.execute(select(privacy_ledger.c.id).where(
        privacy_ledger.c.job_id == job_id, privacy_ledger.c.round == number)).first()
    if exists is None:
        conn.execute(insert(privacy_ledger).values(job_id=job_id, round=number,
                                                   created_at=now(), **ledger))


def charge_ledger(conn: Connection, job_id: str, number: int, ledger: dict[str, Any],
                  audits: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
    """A charge without a release (a withheld round whose inputs the server saw)."""
    _charge(conn, job_id, number, ledger)
    if audits:
        append_audits(conn, job_id, audits)


def privacy_ledger_rows(conn: Connection, job_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(select(privacy_ledger).where(privacy_ledger.c.job_id == job_id)
                        .order_by(privacy_ledger.c.round)).mappings().all()
    return [dict(r) for r in rows]


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


def count(conn: Connection, table_name: str) -> int:
    return int(conn.execute(select(func.count()).select_from(TABLES[table_name])).scalar())


# -- strategy state blobs --------------------------------------------------------------------
def pack_state(state: dict[str, Any]) -> bytes:
    def enc(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return {"__nd__": True, "dtype": str(v.dtype), "shape": list(v.shape),
                    "data": v.tobytes()}
        return v

    return msgpack.packb({k: enc(v) for k, v in state.items()}, use_bin_type=True)


def unpack_state(blob: bytes | None) -> dict[str, Any]:
    if not blob:
        return {}
    out: dict[str, Any] = {}
    for k, v in msgpack.unpackb(blob, raw=False).items():
        if isinstance(v, dict) and v.get("__nd__"):
            v = np.frombuffer(v["data"], dtype=v["dtype"]).reshape(v["shape"]).copy()
        out[k] = v
    return out


# -- devices ---------------------------------------------------------------------------------
def register_device(conn: Connection, job_id: str, device_id: str, token_hash: str,
                    traits: dict[str, Any]) -> bool:
    """Register (or re-register, replacing the session token); True if new."""
    ts = now()
    res = conn.execute(update(devices).where(devices.c.job_id == job_id,
                                             devices.c.device_id == device_id)
                       .values(token_hash=token_hash, traits=traits, last_seen=ts))
    if res.rowcount == 1:
        return False
    conn.execute(insert(devices).values(job_id=job_id, device_id=device_id,
                                        token_hash=token_hash, traits=traits,
                                        registered_at=ts, last_seen=ts))
    append_audits(conn, job_id, [("device.registered", "coordinator", {"device_id": device_id})])
    return True


def touch_device(conn: Connection, job_id: str, device_id: str,
                 traits: dict[str, Any] | None) -> None:
    values: dict[str, Any] = {"last_seen": now()}
    if traits is not None:
        values["traits"] = traits
    conn.execute(update(devices).where(devices.c.job_id == job_id,
                                       devices.c.device_id == device_id).values(**values))


def list_devices(conn: Connection, job_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(select(devices).where(devices.c.job_id == job_id)
                        .order_by(devices.c.device_id)).mappings().all()
    return [dict(r) for r in rows]


def list_device_ids(conn: Connection, job_id: str) -> list[str]:
    return list(conn.execute(_DEVICE_IDS, {"d_job": job_id}).scalars())


def count_devices(conn: Connection, job_id: str) -> int:
    return int(conn.execute(_DEVICE_COUNT, {"d_job": job_id}).scalar_one())


def device_token_hash(conn: Connection, job_id: str, device_id: str) -> str | None:
    return conn.execute(select(devices.c.token_hash).where(
        devices.c.job_id == job_id, devices.c.device_id == device_id)).scalar()


def list_jobs(conn: Connection, status: str | None) -> list[dict[str, Any]]:
    query = select(jobs).order_by(jobs.c.created_at)
    if status is not None:
        query = query.where(jobs.c.status == status)
    return [dict(r) for r in conn.execute(query).mappings().all()]
