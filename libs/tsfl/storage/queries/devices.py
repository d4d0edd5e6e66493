"""Device rows: a job's registered devices, their session-token hashes and traits."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Connection

from tsfl.storage.queries.audit import append_audits
from tsfl.storage.queries.common import now
from tsfl.storage.schema import devices

# Hot-path statements are built once: constructing SQLAlchemy expressions per call costs
# more than SQLite takes to run them.
_DEVICE_IDS = (select(devices.c.device_id).where(devices.c.job_id == bindparam("d_job"))
               .order_by(devices.c.device_id))
_DEVICE_COUNT = (select(func.count()).select_from(devices)
                 .where(devices.c.job_id == bindparam("d_job")))


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
