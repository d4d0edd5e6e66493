"""What the parts of the coordinator share: its state and the round transitions each part
may call. :class:`~tsfl.pipeline.coordinator.Coordinator` is one role assembled from
:class:`~tsfl.pipeline.coordinator_jobs.JobDesk` (jobs: submit, resume, finish, enrol),
:class:`~tsfl.pipeline.coordinator_devices.DeviceDesk` (the device API) with
:class:`~tsfl.pipeline.coordinator_fedbuff.BufferDesk` (its asynchronous jobs),
:class:`~tsfl.pipeline.coordinator_crypto.CryptoDesk` (SecAgg+ and threshold HE) and
:class:`~tsfl.pipeline.coordinator_metrics.ReleaseRecorder` (what a release records);
the round state machine itself stays in the coordinator module.

Invariant (the coordinator's): every round transition is persisted in the store before
the event announcing it is published, and an upload counts once per (job, round,
client).
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Coroutine
from typing import Any

from tsfl.core.protocol import UploadReceipt
from tsfl.pipeline.job_state import ActiveRound, JobState
from tsfl.pipeline.released_models import ReleasedModels
from tsfl.pipeline.role import BusRole


class CoordinatorBase(BusRole):
    """The coordinator's state and the transitions its parts share."""

    jobs: dict[str, JobState]
    max_update_bytes: int
    evaluate_releases: bool
    he_openings: bool
    released: ReleasedModels
    _metrics_lock: asyncio.Lock

    @abstractmethod
    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the round (kept referenced; stop() cancels it)."""

    @abstractmethod
    async def _announce_open(self, job: JobState, number: int) -> None:
        """Ask the selector for round ``number``'s cohort."""

    @abstractmethod
    async def _on_deadline(self, job_id: str, number: int) -> None:
        """The round's deadline passed: close it with what came, or fail it."""

    @abstractmethod
    def _quorum(self, job: JobState, active: ActiveRound) -> int:
        """The uploads that close ``active`` early."""

    @abstractmethod
    async def _close(self, job: JobState, active: ActiveRound) -> None:
        """COLLECTING → CLOSING: persisted, then announced."""

    @abstractmethod
    async def _fail(self, job: JobState, active: ActiveRound, reason: str,
                    rejected: dict[str, str] | None = None) -> None:
        """The round fails with ``reason``: persisted, announced, resolved."""

    @abstractmethod
    async def _refuse(self, job: JobState | None, active: ActiveRound | None, client_id: str,
                      code: str, message: str) -> UploadReceipt:
        """Audit a refused upload and answer it."""

    @abstractmethod
    def _devices_evaluate(self, job: JobState) -> bool:
        """Whether this job's tasks ask devices to evaluate the model they are sent."""
