"""The coordinator role: owns jobs and round state, and is what devices talk to.

Consumes ``tsfl.cohorts`` (from the selector), ``tsfl.models`` (released by the privacy
stage) and ``tsfl.failures`` (rounds that could not be aggregated or released); produces
``tsfl.rounds``, ``tsfl.devices`` and the updates: ``tsfl.updates.raw`` for central-DP
jobs, for the others ``tsfl.updates.clipped`` directly, or ``tsfl.updates.direct`` when no
robust rule judges them. Every round transition is persisted in the store before the
event announcing it is published. Uploads are idempotent by (job, round, client).

This module holds the round state machine (open → collecting → closing →
published/failed); the jobs (submit, resume, finish, enrolment), the device API, the
asynchronous jobs' releases, the cryptographic rounds and what a release records are its
parts (:mod:`~tsfl.pipeline.coordinator_base` says how they fit), the per-job
state is :mod:`~tsfl.pipeline.job_state` and what a spec implies for tasks and stages is
:mod:`~tsfl.pipeline.task_config`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine
from typing import Any

import numpy as np

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record
from tsfl.core.protocol import UploadReceipt
from tsfl.pipeline import events
from tsfl.pipeline.coordinator_crypto import CryptoDesk
from tsfl.pipeline.coordinator_fedbuff import Buffer, is_buffered
from tsfl.pipeline.coordinator_jobs import JobDesk
from tsfl.pipeline.coordinator_metrics import ReleaseRecorder
from tsfl.pipeline.job_state import (
    DOWNLINK_WINDOW,
    SYSTEM_AUDIT,
    ActiveRound,
    JobState,
    RoundResult,
    UploadRefused,
)
from tsfl.pipeline.released_models import ReleasedModels
from tsfl.pipeline.round_metrics import observe_round_end
from tsfl.pipeline.secagg_stages import SecAggOutcome, SecAggStages
from tsfl.pipeline.selection import client_seed
from tsfl.pipeline.task_config import (
    adaptive_request,
    plan_entry,
    poisson_rate,
    secagg_round_config,
    secret_cohorts,
)
from tsfl.storage.store import RoundState, Store, StoreError
from tsfl.wire.envelope import Frame
from tsfl.wire.messages import decode_model

__all__ = ["SYSTEM_AUDIT", "Coordinator", "RoundResult", "UploadRefused"]


class Coordinator(JobDesk, CryptoDesk, ReleaseRecorder):
    name = "coordinator"

    def __init__(self, bus: Bus, store: Store, *, group_id: str = "coordinator",
                 max_update_bytes: int = 2 * 1024**3):
        super().__init__(bus, store, [topics.COHORTS, topics.MODELS, topics.FAILURES],
                         group_id)
        self.max_update_bytes = max_update_bytes
        self.jobs: dict[str, JobState] = {}
        self._tasks: set[asyncio.Future[None]] = set()  # background work (stop cancels)
        #: evaluate each released model server-side (the distributed deployment; the
        #: embedded runner evaluates centrally itself)
        self.evaluate_releases = False
        #: whether its devices' transport carries threshold-HE openings (:meth:`he_open`)
        #: and key ceremonies (:meth:`he_setup`): the in-process one and the gRPC device
        #: API (``HeOpen``, ``HeSetup``) do
        self.he_openings = False
        self._metrics_lock = asyncio.Lock()
        self.released = ReleasedModels(store)  # finished jobs' final models
        self._sessions: dict[tuple[str, str], str] = {}  # (job, device) -> session hash
        self.buffers: dict[str, Buffer] = {}  # asynchronous jobs' tasks in flight

    async def stop(self) -> None:
        for job in self.jobs.values():
            if job.round and job.round.deadline:
                job.round.deadline.cancel()
            if job.round and job.round.secagg:
                job.round.secagg.cancel()
            if job.he_opening is not None:
                job.he_opening.cancel()
            if job.he_ceremony is not None:
                job.he_ceremony.cancel()
        for task in list(self._tasks):
            task.cancel()
        await super().stop()

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the round (a reference is kept; stop() cancels it)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- rounds ----------------------------------------------------------------------------
    async def open_round(self, job_id: str, timeout: float | None = None) -> list[str]:
        """Open the next round, have the selector choose its cohort, start collecting.

        Returns the cohort (empty when the round failed for want of devices).
        """
        job = self.jobs[job_id]
        if job.round is not None and not (job.round.done and job.round.done.done()):
            raise StoreError(f"round {job.round.number} of {job_id} is still open")
        number = job.last_round + 1
        loop = asyncio.get_running_loop()
        await self.store.open_round(job_id, number, job.version)
        active = ActiveRound(number, selected=loop.create_future(), done=loop.create_future())
        job.round, job.last_round = active, number
        if is_buffered(job):  # FedBuff: a release takes whoever comes, no cohort
            await self._open_release(job, active)
        else:
            await self._announce_open(job, number)
        assert active.selected is not None
        return await asyncio.wait_for(asyncio.shield(active.selected), timeout)

    async def _announce_open(self, job: JobState, number: int) -> None:
        """Ask the selector for round ``number``'s cohort. A DP job's cohort is drawn in
        secret (a CSPRNG; the seed is not even sent), so no one can recompute it."""
        spec = job.spec
        secret = secret_cohorts(spec)
        await self.bus.publish(topics.ROUNDS, events.round_event(
            events.OPEN, job.job_id, number, model_version=job.version,
            k=spec.clients.per_round, min=spec.round.min_updates,
            seed=None if secret else spec.seed, secret=secret,
            poisson_rate=poisson_rate(spec),
            adaptive=adaptive_request(spec, job.layout.total_size)), key=job.job_id.encode())

    async def _on_cohort(self, msg: dict[str, Any]) -> None:
        job = self.jobs.get(msg["job"])
        if job is None or job.round is None or job.round.number != msg["round"]:
            return
        active = job.round
        if active.state is not RoundState.OPEN:
            return  # a redelivered cohort: the first one counts
        cohort = [str(c) for c in msg["cohort"]]
        if not cohort:
            await self._fail(job, active, msg.get("reason") or "no cohort")
            if active.selected and not active.selected.done():
                active.selected.set_result([])
            return
        population = msg.get("population")
        await self.store.start_collecting(
            job.job_id, active.number, cohort,
            population if isinstance(population, int) and population >= len(cohort) else None)
        active.state = RoundState.COLLECTING
        active.cohort = cohort
        active.seeds = {c: client_seed(job.spec.seed, active.number, c) for c in cohort}
        plan = msg.get("codecs") or {}
        if isinstance(plan, dict):
            checked = {str(c): plan_entry(e) for c, e in plan.items() if c in active.seeds}
            active.codec_plan = {c: e for c, e in checked.items() if e is not None}
        active.deadline = asyncio.get_running_loop().call_later(
            job.spec.round.deadline_s,
            lambda: asyncio.ensure_future(self._on_deadline(job.job_id, active.number)))
        if job.spec.crypto.mode == "secagg":
            try:
                config = secagg_round_config(job.job_id, job.spec, active.number, cohort,
                                             job.layout.total_size)
            except ValueError as exc:  # e.g. a sampled cohort too small for the threat model
                await self._fail(job, active, f"secagg: {exc}")
                if active.selected and not active.selected.done():
                    active.selected.set_result(cohort)
                return

            async def done(outcome: SecAggOutcome) -> None:
                await self._on_secagg_done(job, active, outcome)

            active.secagg = SecAggStages(config, job.spec.crypto.secagg.stage_timeout_s, done)
        await self.bus.publish(topics.ROUNDS, events.round_event(
            events.COLLECTING, job.job_id, active.number, cohort=cohort,
            model_version=job.version), key=job.job_id.encode())
        if active.selected and not active.selected.done():
            active.selected.set_result(cohort)

    async def wait_round(self, job_id: str) -> RoundResult:
        active = self.jobs[job_id].round
        assert active is not None and active.done is not None
        return await asyncio.shield(active.done)

    def open_round_number(self, job_id: str) -> int | None:
        """The round in progress (after a resume), or None when the next must be opened."""
        active = self.jobs[job_id].round
        if active is None or (active.done is not None and active.done.done()):
            return None
        return active.number

    def _quorum(self, job: JobState, active: ActiveRound) -> int:
        if is_buffered(job):
            return job.spec.strategy.fedbuff.buffer
        need = math.ceil(job.spec.round.quorum * len(active.cohort) - 1e-9)
        return max(job.spec.round.min_updates, min(need, len(active.cohort)))

    async def _close(self, job: JobState, active: ActiveRound) -> None:
        if active.state is not RoundState.COLLECTING:
            return
        active.state = RoundState.CLOSING
        self._release_closed(job)
        if active.deadline:
            active.deadline.cancel()
        await self.store.transition_round(job.job_id, active.number, RoundState.CLOSING)
        await self.bus.publish(topics.ROUNDS, events.round_event(
            events.CLOSING, job.job_id, active.number, uploaded=list(active.uploaded)),
            key=job.job_id.encode())

    async def _on_deadline(self, job_id: str, number: int) -> None:
        job = self.jobs.get(job_id)
        if job is not None and is_buffered(job):  # not in the middle of accepting an update
            async with self._buffer(job).lock:
                await self._settle_at_deadline(job_id, number)
        else:
            await self._settle_at_deadline(job_id, number)

    async def _settle_at_deadline(self, job_id: str, number: int) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.round is None or job.round.number != number:
            return
        active = job.round
        if active.state is not RoundState.COLLECTING:
            return
        if active.secagg is not None:  # the stages decide; past the deadline they failed
            active.secagg.cancel()
            await self._fail(job, active, "secagg round did not finish before the deadline")
            return
        if len(active.uploaded) >= job.spec.round.min_updates:
            await self._close(job, active)
        else:
            await self._fail(job, active, (
                f"too few updates: {len(active.uploaded)} before the deadline, "
                f"{job.spec.round.min_updates} needed"))

    async def _fail(self, job: JobState, active: ActiveRound, reason: str,
                    rejected: dict[str, str] | None = None) -> None:
        active.state = RoundState.FAILED
        self._release_closed(job)
        if active.deadline:
            active.deadline.cancel()
        if active.secagg is not None:
            active.secagg.cancel()
        if active.he_commits is not None:  # no one waits for a failed round's commitments
            active.he_commits.close()
        await self.store.transition_round(job.job_id, active.number, RoundState.FAILED,
                                          reason=reason)
        await self.bus.publish(topics.ROUNDS, events.round_event(
            events.ROUND_FAILED, job.job_id, active.number, reason=reason),
            key=job.job_id.encode())
        dropped = [c for c in active.cohort
                   if c not in active.uploaded and c not in active.declined]
        self._resolve(active, RoundResult(active.number, False, job.version, [],
                                          rejected or {}, dropped, 0, None, active.bytes_up,
                                          active.bytes_down, reason), job)

    @staticmethod
    def _resolve(active: ActiveRound, result: RoundResult, job: JobState | None = None) -> None:
        if job is not None:
            observe_round_end(job.job_id, result, active.opened_at,
                              job.spec.privacy.target_epsilon)
        if active.done is not None and not active.done.done():
            active.done.set_result(result)

    async def _refuse(self, job: JobState | None, active: ActiveRound | None, client_id: str,
                      code: str, message: str) -> UploadReceipt:
        # Refusals that cannot be tied to a running job go to the system audit chain.
        await self.store.append_audit(job.job_id if job else SYSTEM_AUDIT, "upload.refused", {
            "round": active.number if active else None, "client_id": client_id,
            "code": code, "message": message})
        self.log.info("refused upload from %s: %s (%s)", client_id, code, message)
        return UploadReceipt(False, code, message)

    # -- pipeline results ------------------------------------------------------------------
    async def handle(self, record: Record) -> None:
        if record.topic == topics.COHORTS:
            await self._on_cohort(events.parse_cohort(record.value))
        elif record.topic == topics.MODELS:
            await self._on_model(record.value)
        else:
            head, _ = events.parse_aggregate(record.value)
            if not head["ok"]:
                await self._on_failed_aggregate(head)
        self.settle(record)

    async def _on_failed_aggregate(self, head: dict[str, Any]) -> None:
        job = self.jobs.get(head["job"])
        if job is None or job.round is None or job.round.number != head["round"]:
            return
        if job.round.state is RoundState.CLOSING:
            await self._fail(job, job.round, head.get("reason") or "aggregation failed",
                             dict(head["rejected"]))

    async def _on_model(self, data: Frame) -> None:
        job_id_hint = events.peek_model_job(data)
        job = self.jobs.get(job_id_hint)
        if job is None:
            return
        _, version, vector, extra = decode_model(data, job.layout)
        active = job.round
        if active is None or active.number != extra.get("round"):
            return  # replay of an older round's model
        if active.state is not RoundState.CLOSING:
            return
        if version != job.version + 1:
            raise StoreError(f"model of round {active.number} is v{version}, "
                             f"expected v{job.version + 1}")
        # who took part stays with the operator: the release names nobody
        outcome = await self.store.checkpoint_outcome(job.job_id, version) or {}
        accepted = [str(c) for c in outcome.get("accepted") or []]
        rejected = {str(k): str(v) for k, v in (outcome.get("rejected") or {}).items()}
        dropped = [c for c in active.cohort
                   if c not in active.uploaded and c not in active.declined]
        await self.store.complete_round(job.job_id, active.number, accepted=accepted,
                                        rejected=rejected, dropped=dropped)
        active.state = RoundState.PUBLISHED
        if active.norms:
            job.previous_norms.append(float(np.median(active.norms)))
        if job.spec.compression.downlink == "delta":
            job.history[job.version] = decode_model(job.model_bytes, job.layout)[2]
            for old in sorted(job.history)[:-DOWNLINK_WINDOW]:
                del job.history[old]
            job.delta_cache.clear()
        self._settle_device_evaluations(job)
        self._superseded(job, job.version, job.model_bytes)
        job.version, job.model_bytes, job.release_round = version, bytes(data), active.number
        await self.bus.publish(topics.ROUNDS, events.round_event(
            events.PUBLISHED, job.job_id, active.number, model_version=version),
            key=job.job_id.encode())
        result = RoundResult(
            active.number, True, version, accepted, rejected, dropped,
            int(outcome.get("num_examples") or 0), outcome.get("train_loss"), active.bytes_up,
            active.bytes_down, epsilon=extra.get("epsilon"), codecs=dict(active.codec_stats),
            slowest_upload_s=active.slowest_upload_s, sealed_bytes=active.sealed_bytes,
            sealed_values=active.sealed_values)
        self._resolve(active, result, job)
        if self.evaluate_releases:
            self._background(self._record_release(job, result, vector))
