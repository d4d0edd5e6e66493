"""Checkpoints: the models a job released (vector, strategy state, sealed HE part,
outcome), and the release that charges the ledger and audits in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np
from sqlalchemy import bindparam, insert, select
from sqlalchemy.engine import Connection

from tsfl.storage.queries.audit import append_audits
from tsfl.storage.queries.common import now
from tsfl.storage.queries.privacy_ledger import charge
from tsfl.storage.schema import checkpoints

# Hot-path statements are built once: constructing SQLAlchemy expressions per call costs
# more than SQLite takes to run them.
_CHECKPOINT_INSERT = insert(checkpoints)
_LATEST_CHECKPOINT = (select(checkpoints).where(checkpoints.c.job_id == bindparam("c_job"))
                      .order_by(checkpoints.c.version.desc()).limit(1))
_LATEST_CHECKPOINT_META = (select(checkpoints.c.version, checkpoints.c.round)
                           .where(checkpoints.c.job_id == bindparam("c_job"))
                           .order_by(checkpoints.c.version.desc()).limit(1))


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
        charge(conn, job_id, number, ledger)
    save_checkpoint(conn, job_id, version, number, layout_digest, vector, strategy_state,
                    sealed, outcome)
    if audits:
        append_audits(conn, job_id, audits)


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
