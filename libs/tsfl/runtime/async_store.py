"""The store side of an asynchronous (FedBuff) embedded run.

A FedBuff run (:mod:`tsfl.runtime.async_sim`) has no rounds on the bus, but it persists
like a synchronous one so that ``tsfl.db`` holds the same trail: the job row and its
initial checkpoint (version 0); per *release* (number r = model version r) one round
row walked through the same lifecycle (OPEN → COLLECTING with the devices whose updates
reached the buffer → CLOSING → AGGREGATED → PUBLISHED), every participant's outcome
(accepted, or rejected with the buffer's reason: too stale, not finite), the released
checkpoint with the strategy's state, a ``fedbuff.released`` audit event (its staleness)
and the release's metrics; finally the job's status. Each release is one transaction, so
a release is never stored without its round, participants and audit events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Connection

from tsfl.storage.queries import checkpoints, rounds
from tsfl.storage.states import RoundState
from tsfl.storage.store import Store

if TYPE_CHECKING:
    from tsfl.config import JobSpec
    from tsfl.core.layout import ParamLayout
    from tsfl.pipeline.async_buffer import Release

#: the round metrics stored per release (those the synchronous run stores)
STORED_METRICS = ("test_loss", "test_accuracy", "train_loss")


@dataclass
class ReleaseLog:
    """Persists an async run's releases; :meth:`offered` notes each update as it reaches
    the buffer, :meth:`released` writes the release it completed."""

    store: Store
    job_id: str
    layout_digest: str
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)

    @classmethod
    async def open(cls, db_path: Path, job_id: str, spec: JobSpec, layout: ParamLayout,
                   initial: np.ndarray) -> ReleaseLog:
        """A fresh SQLite store at ``db_path`` with the job and its version-0 model."""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        store = await Store.open(f"sqlite:///{db_path}", exclusive=True)
        await store.create_job(job_id, spec.name, spec.model_dump(mode="json"), spec.sha256(),
                               layout.to_json())
        await store.save_checkpoint(job_id, 0, 0, layout.digest, initial)
        return cls(store, job_id, layout.digest)

    def offered(self, client_id: str, refused: str | None = None) -> None:
        """An update from ``client_id`` reached the buffer (``refused``: why not kept)."""
        if refused is None:
            self.rejected.pop(client_id, None)
            if client_id not in self.accepted:
                self.accepted.append(client_id)
        elif client_id not in self.accepted:
            self.rejected[client_id] = refused

    async def released(self, number: int, vector: np.ndarray,
                       strategy_state: dict[str, Any] | None, rel: Release,
                       metrics: dict[str, Any]) -> None:
        """Store release ``number`` (model version ``number``) in one transaction."""
        accepted, rejected = self.accepted, self.rejected
        self.accepted, self.rejected = [], {}
        audit = ("fedbuff.released", "aggregator", {
            "round": number, "version": number, "updates": rel.count,
            "staleness_mean": float(np.mean(rel.staleness)),
            "staleness_max": int(max(rel.staleness)), "sim_time_s": metrics.get("sim_time_s")})
        stored = {k: metrics.get(k) for k in STORED_METRICS}
        await self.store.run_in_transaction(
            _write_release, self.job_id, number, self.layout_digest,
            np.asarray(vector, dtype=np.float32), strategy_state, accepted, rejected, audit,
            stored)

    async def close(self, status: str, reason: str | None) -> None:
        """Record the job's outcome and close the store."""
        try:
            await self.store.finish_job(self.job_id, status, reason)
        finally:
            await self.store.close()


def _write_release(conn: Connection, job_id: str, number: int, digest: str,
                   vector: np.ndarray, strategy_state: dict[str, Any] | None,
                   accepted: list[str], rejected: dict[str, str],
                   audit: tuple[str, str, dict[str, Any]], metrics: dict[str, Any]) -> None:
    rounds.open_round(conn, job_id, number, number - 1)
    rounds.start_collecting(conn, job_id, number, [*accepted, *rejected])
    rounds.transition_round(conn, job_id, number, RoundState.CLOSING)
    rounds.complete_round(conn, job_id, number, accepted, rejected, [], True)
    checkpoints.release_model(conn, job_id, number, number, digest, vector, strategy_state,
                              None, [audit])
    rounds.set_round_metrics(conn, job_id, number, metrics)
