"""The store: jobs, rounds, participants, checkpoints and the audit trail, as one async
API on :class:`~tsfl.storage.database.Database` (SQLite in-process or PostgreSQL on
asyncpg). Both engines execute the same functions from :mod:`tsfl.storage.queries`.

Round transitions are checked against the lifecycle and persisted before anyone
announces them. The audit trail is append-only and hash-chained per job: each row
carries the hash of the previous one, so editing or deleting a row is detectable
(:meth:`Store.verify_audit`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np

from tsfl.storage.database import Database
from tsfl.storage.queries import (
    admin,
    audit,
    checkpoints,
    common,
    devices,
    jobs,
    participants,
    privacy_ledger,
    robust,
    rounds,
)
from tsfl.storage.rows import (
    AuditRow,
    CheckpointRow,
    DeviceRow,
    JobRow,
    ParticipantRow,
    RoundRow,
)
from tsfl.storage.states import RoundState, StoreError

__all__ = ["RoundState", "Store", "StoreError"]


class Store(Database):
    """Async repository over one database (see the module docstring)."""

    # -- jobs ------------------------------------------------------------------------------
    async def create_job(self, job_id: str, name: str, spec: dict[str, Any], spec_sha256: str,
                         layout: list[dict[str, Any]] | None = None,
                         enrollment_hash: str | None = None, owner: str | None = None) -> None:
        await self._tx(jobs.create_job, job_id, name, spec, spec_sha256, layout, enrollment_hash,
                       owner)

    async def set_job_key(self, job_id: str, spec: dict[str, Any], spec_sha256: str,
                          details: dict[str, Any]) -> None:
        """A threshold-HE job's spec once its silos' key ceremony named the key (its key
        id filled in), audited as ``he.key.created`` with ``details``, in one
        transaction."""
        await self._tx(jobs.set_job_key, job_id, spec, spec_sha256, details)

    async def finish_job(self, job_id: str, status: str, reason: str | None = None) -> None:
        await self._tx(jobs.finish_job, job_id, status, reason)

    async def get_job(self, job_id: str) -> JobRow | None:
        return cast("JobRow | None", await self._read(jobs.get_job, job_id))

    async def list_jobs(self, status: str | None = None) -> list[JobRow]:
        return cast("list[JobRow]", await self._read(jobs.list_jobs, status))

    # -- admin identities --------------------------------------------------------------------
    async def add_admin_token(self, row: dict[str, Any]) -> None:
        await self._tx(admin.add_admin_token, row)

    async def admin_token(self, token_id: str) -> dict[str, Any] | None:
        return await self._read(admin.admin_token, token_id)

    async def revoke_admin_token(self, token_id: str) -> bool:
        return await self._tx(admin.revoke_admin_token, token_id)

    # -- rounds ----------------------------------------------------------------------------
    async def open_round(self, job_id: str, number: int, model_version: int) -> None:
        """Create round ``number`` in state OPEN (before it is announced)."""
        await self._tx(rounds.open_round, job_id, number, model_version)

    async def start_collecting(self, job_id: str, number: int, cohort: Sequence[str],
                               population: int | None = None) -> None:
        """Record the cohort and move the round OPEN -> COLLECTING (one transaction)."""
        await self._tx(rounds.start_collecting, job_id, number, list(cohort), population)

    async def transition_round(self, job_id: str, number: int, new: RoundState, *,
                               reason: str | None = None) -> None:
        """Move a round along its lifecycle; illegal moves raise :class:`StoreError`."""
        await self._tx(rounds.transition_round, job_id, number, new, reason)

    async def complete_round(self, job_id: str, number: int, *, accepted: Iterable[str],
                             rejected: dict[str, str], dropped: Iterable[str],
                             publish: bool = True) -> None:
        """CLOSING -> AGGREGATED (with each participant's outcome) -> PUBLISHED."""
        await self._tx(rounds.complete_round, job_id, number, list(accepted), dict(rejected),
                       list(dropped), publish)

    async def set_rounds_metrics(self, job_id: str, metrics: dict[int, dict[str, Any]]) -> None:
        """Several rounds' metrics in one transaction."""
        await self._tx(rounds.set_rounds_metrics, job_id, metrics)

    async def set_round_metrics(self, job_id: str, number: int,
                                metrics: dict[str, Any]) -> None:
        await self._tx(rounds.set_round_metrics, job_id, number, metrics)

    async def get_round(self, job_id: str, number: int) -> RoundRow | None:
        return cast("RoundRow | None", await self._read(rounds.get_round, job_id, number))

    async def list_rounds(self, job_id: str) -> list[RoundRow]:
        return cast("list[RoundRow]", await self._read(rounds.list_rounds, job_id))

    # -- participants ----------------------------------------------------------------------
    async def record_upload(self, job_id: str, number: int, client_id: str, *,
                            num_examples: int, bytes_up: int,
                            metrics: dict[str, float]) -> bool:
        """Mark a selected client's update as received.

        Returns ``False`` (changing nothing) if this (job, round, client) already
        uploaded, so a replayed or duplicated upload never counts twice; raises
        :class:`StoreError` if the client was not selected for the round.
        """
        if self._conn is not None:  # SQLite: the per-update hot path, straight to the driver
            return self._record_upload_sqlite(job_id, number, client_id, num_examples,
                                              bytes_up, metrics)
        return await self._tx(participants.record_upload, job_id, number, client_id, num_examples,
                              bytes_up, metrics)

    async def join_release(self, job_id: str, number: int, client_id: str) -> bool:
        """Add a device to an asynchronous job's open release (FedBuff) before its upload
        is recorded; False when it is in it already."""
        return await self._tx(participants.join_release, job_id, number, client_id)

    _SQLITE_RECORD_UPLOAD = (
        "UPDATE participants SET status = 'uploaded', num_examples = ?, bytes_up = ?, "
        "metrics = ?, updated_at = ? WHERE job_id = ? AND round = ? AND client_id = ? "
        "AND status = 'selected'")

    def _record_upload_sqlite(self, job_id: str, number: int, client_id: str,
                              num_examples: int, bytes_up: int,
                              metrics: dict[str, float]) -> bool:
        """:func:`queries.participants.record_upload` on the raw sqlite3 connection.

        One statement per device update: SQLAlchemy's per-statement work costs ~8× the
        statement here. Same SQL, same semantics; the SQLite store tests cover it.
        """
        assert self._conn is not None
        if self._conn.in_transaction():
            raise StoreError("record_upload called inside another transaction")
        raw = self._conn.connection.driver_connection
        assert raw is not None
        raw.execute("BEGIN IMMEDIATE")
        try:
            cur = raw.execute(self._SQLITE_RECORD_UPLOAD, (
                num_examples, bytes_up, json.dumps(metrics), common.now(), job_id, number,
                client_id))
            fresh = cur.rowcount == 1
            status = None if fresh else raw.execute(
                "SELECT status FROM participants WHERE job_id = ? AND round = ? "
                "AND client_id = ?", (job_id, number, client_id)).fetchone()
        except BaseException:
            raw.execute("ROLLBACK")
            raise
        raw.execute("COMMIT")
        if not fresh and status is None:
            raise StoreError(f"client {client_id!r} was not selected for round {number}")
        return fresh

    async def note_upload_seen(self, job_id: str, number: int, client_id: str,
                               bytes_up: int) -> None:
        await self._tx(participants.note_upload_seen, job_id, number, client_id, bytes_up)

    async def uploads_seen(self, job_id: str, up_to: int) -> dict[str, int]:
        """Per client, how many rounds ≤ ``up_to`` delivered its update to the server."""
        return await self._read(participants.uploads_seen, job_id, up_to)

    async def reject_participant(self, job_id: str, number: int, client_id: str, reason: str,
                                 actor: str = "coordinator") -> None:
        await self._tx(participants.reject_participant, job_id, number, client_id, reason, actor)

    async def list_participants(self, job_id: str, number: int | None = None
                                ) -> list[ParticipantRow]:
        return cast("list[ParticipantRow]",
                    await self._read(participants.list_participants, job_id, number))

    # -- checkpoints -----------------------------------------------------------------------
    async def save_checkpoint(self, job_id: str, version: int, number: int, layout_digest: str,
                              vector: np.ndarray,
                              strategy_state: dict[str, Any] | None = None) -> None:
        await self._tx(checkpoints.save_checkpoint, job_id, version, number, layout_digest, vector,
                       strategy_state)

    async def latest_checkpoint(self, job_id: str, version: int | None = None
                                ) -> CheckpointRow | None:
        """The newest checkpoint (or the one of ``version``): vector, strategy state..."""
        return cast("CheckpointRow | None",
                    await self._read(checkpoints.latest_checkpoint, job_id, version))

    async def latest_checkpoint_meta(self, job_id: str) -> tuple[int, int] | None:
        """(version, round) of the newest checkpoint."""
        return await self._read(checkpoints.latest_checkpoint_meta, job_id)

    async def release_model(self, job_id: str, version: int, number: int, layout_digest: str,
                            vector: np.ndarray, strategy_state: dict[str, Any] | None, *,
                            ledger: dict[str, Any] | None = None,
                            audits: Sequence[tuple[str, str, dict[str, Any]]] = (),
                            sealed: bytes | None = None,
                            outcome: dict[str, Any] | None = None) -> None:
        """Ledger charge + checkpoint (with an HE job's encrypted part and the round's
        outcome, which is never released) + audit events, atomically."""
        await self._tx(checkpoints.release_model, job_id, version, number, layout_digest, vector,
                       strategy_state, ledger, list(audits), sealed, outcome)

    async def charge_ledger(self, job_id: str, number: int, ledger: dict[str, Any],
                            audits: Sequence[tuple[str, str, dict[str, Any]]] = ()) -> None:
        """Charge round ``number`` without releasing anything (idempotent by round)."""
        await self._tx(privacy_ledger.charge_ledger, job_id, number, ledger, list(audits))

    async def checkpoint_outcome(self, job_id: str, version: int) -> dict[str, Any] | None:
        return await self._read(checkpoints.checkpoint_outcome, job_id, version)

    async def privacy_ledger(self, job_id: str) -> list[dict[str, Any]]:
        return await self._read(privacy_ledger.privacy_ledger_rows, job_id)

    # -- robust aggregation ------------------------------------------------------------------
    async def record_verdicts(self, job_id: str, number: int,
                              verdicts: Sequence[dict[str, Any]],
                              audits: Sequence[tuple[str, str, dict[str, Any]]] = ()) -> None:
        await self._tx(robust.record_verdicts, job_id, number, list(verdicts), list(audits))

    async def save_robust_state(self, job_id: str, number: int, state: bytes) -> None:
        """The byzantine stage's client history as it stands before round ``number``."""
        await self._tx(robust.save_robust_state, job_id, number, state)

    async def load_robust_state(self, job_id: str) -> tuple[int, bytes] | None:
        return await self._read(robust.load_robust_state, job_id)

    # -- audit -----------------------------------------------------------------------------
    async def append_audit(self, job_id: str, kind: str, payload: dict[str, Any],
                           actor: str = "coordinator") -> None:
        await self._tx(audit.append_audits, job_id, [(kind, actor, payload)])

    async def audit_trail(self, job_id: str) -> list[AuditRow]:
        return cast("list[AuditRow]", await self._read(audit.audit_trail, job_id))

    async def verify_audit(self, job_id: str) -> tuple[bool, str]:
        """Recompute the chain; ``(False, why)`` names the first broken row."""
        prev = audit.GENESIS_HASH
        for expected_seq, row in enumerate(await self.audit_trail(job_id)):
            if row["seq"] != expected_seq:
                return False, f"row seq {row['seq']} where {expected_seq} was expected (deleted?)"
            if row["prev_hash"] != prev:
                return False, f"row seq {row['seq']}: prev_hash does not match the previous row"
            if audit.audit_hash(prev, row) != row["hash"]:
                return False, f"row seq {row['seq']}: content does not match its hash"
            prev = row["hash"]
        return True, "ok"

    # -- devices ---------------------------------------------------------------------------
    async def register_device(self, job_id: str, device_id: str, token_hash: str,
                              traits: dict[str, Any] | None = None) -> bool:
        return await self._tx(devices.register_device, job_id, device_id, token_hash, traits or {})

    async def touch_device(self, job_id: str, device_id: str,
                           traits: dict[str, Any] | None = None) -> None:
        await self._tx(devices.touch_device, job_id, device_id, traits)

    async def list_devices(self, job_id: str) -> list[DeviceRow]:
        return cast("list[DeviceRow]", await self._read(devices.list_devices, job_id))

    async def list_device_ids(self, job_id: str) -> list[str]:
        """The job's registered device ids, in order."""
        return await self._read(devices.list_device_ids, job_id)

    async def count_devices(self, job_id: str) -> int:
        """How many devices the job has registered (one COUNT, no rows read)."""
        return await self._read(devices.count_devices, job_id)

    async def device_token_hash(self, job_id: str, device_id: str) -> str | None:
        return await self._read(devices.device_token_hash, job_id, device_id)

    async def count(self, table_name: str) -> int:
        return await self._read(common.count, table_name)
