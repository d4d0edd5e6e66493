"""Job rows: create, key, finish, read and list jobs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from tsfl.storage.queries.audit import append_audits
from tsfl.storage.queries.common import now
from tsfl.storage.schema import jobs
from tsfl.storage.states import StoreError


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


def finish_job(conn: Connection, job_id: str, status: str, reason: str | None) -> None:
    res = conn.execute(update(jobs).where(jobs.c.id == job_id)
                       .values(status=status, reason=reason, updated_at=now()))
    if res.rowcount != 1:
        raise StoreError(f"unknown job {job_id!r}")
    append_audits(conn, job_id, [(f"job.{status.lower()}", "coordinator", {"reason": reason})])


def get_job(conn: Connection, job_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
    return dict(row) if row else None


def list_jobs(conn: Connection, status: str | None) -> list[dict[str, Any]]:
    query = select(jobs).order_by(jobs.c.created_at)
    if status is not None:
        query = query.where(jobs.c.status == status)
    return [dict(r) for r in conn.execute(query).mappings().all()]
