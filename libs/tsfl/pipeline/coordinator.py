"""The coordinator role: owns jobs and round state, and is what devices talk to.

Consumes ``tsfl.cohorts`` (from the selector), ``tsfl.models`` (released by the privacy
stage) and ``tsfl.failures`` (rounds that could not be aggregated or released); produces
``tsfl.rounds``, ``tsfl.devices`` and the updates: ``tsfl.updates.raw`` for central-DP
jobs, for the others ``tsfl.updates.clipped`` directly, or ``tsfl.updates.direct`` when no
robust rule judges them. Every round transition is persisted in the store before the
event announcing it is published. Uploads are idempotent by (job, round, client).

This module holds the jobs and the round state machine (open → collecting → closing →
published/failed); the device API, the cryptographic rounds and what a release records
are its parts (:mod:`~tsfl.pipeline.coordinator_base` says how they fit), the per-job
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
from tsfl.config import JobSpec
from tsfl.core.layout import ParamLayout
from tsfl.core.protocol import UploadReceipt
from tsfl.he import HeError, HeJob
from tsfl.he.job import he_size, needs_ceremony, threshold_keyed, threshold_params
from tsfl.pipeline import events
from tsfl.pipeline.coordinator_crypto import CryptoDesk
from tsfl.pipeline.coordinator_fedbuff import Buffer, BufferDesk, is_buffered
from tsfl.pipeline.coordinator_metrics import ReleaseRecorder
from tsfl.pipeline.credentials import enrollment_digest, session_matches
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
from tsfl.pipeline.strategy_build import strategy_from_spec
from tsfl.pipeline.task_config import (
    adaptive_request,
    local_dp_config,
    plan_entry,
    poisson_rate,
    secagg_round_config,
    secret_cohorts,
    token_hash,
    uplink_config,
)
from tsfl.storage.store import RoundState, Store, StoreError
from tsfl.wire.he import he_message_bounds
from tsfl.wire.messages import decode_model, encode_model

__all__ = ["SYSTEM_AUDIT", "Coordinator", "RoundResult", "UploadRefused"]


class Coordinator(BufferDesk, CryptoDesk, ReleaseRecorder):
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

    # -- jobs ------------------------------------------------------------------------------
    async def submit_job(self, job_id: str, spec: JobSpec, layout: ParamLayout,
                         initial: np.ndarray, enrollment_token: str | None = None,
                         owner: str | None = None) -> None:
        """Persist the job and its initial model (version 0), then announce it."""
        if layout.total_size != initial.shape[0]:
            raise ValueError("initial model does not match its layout")
        if threshold_keyed(spec) and not self.he_openings:
            raise ValueError("crypto.he.keying 'threshold' needs devices that open each sum "
                             "together through the coordinator, which this coordinator's "
                             "devices cannot; use keying 'shared' (trusted silos) here")
        try:
            if needs_ceremony(spec):  # the silos make the key before round 1
                if not spec.crypto.he.authority:
                    raise HeError("key", "crypto.he.authority is missing: the identity "
                                         "authority that certifies the silos")
                he_message_bounds(threshold_params(spec), he_size(spec, layout))
            else:
                HeJob.from_spec(spec, layout)
        except HeError as exc:
            raise ValueError(f"crypto.he: {exc}") from None
        enrolment = (await asyncio.to_thread(enrollment_digest, job_id, enrollment_token)
                     if enrollment_token else None)
        await self.store.create_job(
            job_id, spec.name, spec.model_dump(mode="json"), spec.sha256(), layout.to_json(),
            enrolment, owner)
        await self.store.save_checkpoint(job_id, 0, 0, layout.digest, initial)
        self._track(job_id, spec, layout, 0, encode_model(job_id, 0, initial, layout))
        await self.bus.publish(topics.ROUNDS, events.round_event(events.JOB_STARTED, job_id, 0),
                               key=job_id.encode())

    def _track(self, job_id: str, spec: JobSpec, layout: ParamLayout, version: int,
               model_bytes: bytes, last_round: int = 0) -> JobState:
        strategy = strategy_from_spec(spec)  # its client_config: FedProx's μ, client lr
        job = JobState(job_id, spec, layout, version, model_bytes, strategy.client_config,
                   last_round=last_round, local_dp=local_dp_config(spec, layout.total_size),
                   uplink=uplink_config(spec),
                   he=None if needs_ceremony(spec) else HeJob.from_spec(spec, layout))
        if threshold_keyed(spec):
            job.he_shape = (threshold_params(spec), he_size(spec, layout))
        self.jobs[job_id] = job
        return job

    async def resume_job(self, job_id: str) -> None:
        """Pick a RUNNING job up again after a restart, from the store alone.

        The latest checkpoint gives the model; the last round carries on where it was:
        OPEN asks the selector again, COLLECTING keeps its cohort and the uploads already
        recorded (a device whose update was on the bus but not recorded retries and the
        aggregator counts it once), CLOSING announces the close again — or, when the
        release stage already checkpointed the round's model, waits for that model.
        """
        row = await self.store.get_job(job_id)
        if row is None or row["status"] != "RUNNING":
            raise LookupError(f"job {job_id!r} is not running")
        spec = JobSpec.model_validate(row["spec"])
        layout = ParamLayout.from_json(row["layout"])
        ckpt = await self.store.latest_checkpoint(job_id)
        if ckpt is None:
            raise LookupError(f"job {job_id!r} has no checkpoint")
        rounds = await self.store.list_rounds(job_id)
        last = rounds[-1] if rounds else None
        if (last is not None and last["state"] == "CLOSING" and ckpt["round"] == last["number"]
                and ckpt["version"] > 0):
            # The release stage checkpointed this round's model and the coordinator stopped
            # before reading it back: resume on the model the round trained on. The model
            # record was not committed, so it comes again and completes the round (and if
            # the release stage stopped before publishing it, it publishes it again).
            previous = await self.store.latest_checkpoint(job_id, ckpt["version"] - 1)
            if previous is None:
                raise LookupError(f"job {job_id!r} has no checkpoint v{ckpt['version'] - 1}")
            ckpt = previous
        job = self._track(job_id, spec, layout, ckpt["version"],
                          encode_model(job_id, ckpt["version"], ckpt["vector"], layout,
                                       sealed=ckpt.get("sealed")),
                          last_round=last["number"] if last else 0)
        if last is None or last["state"] in ("PUBLISHED", "FAILED", "AGGREGATED"):
            return
        loop = asyncio.get_running_loop()
        active = ActiveRound(last["number"], RoundState(last["state"]),
                              selected=loop.create_future(), done=loop.create_future())
        job.round = active
        if active.state is RoundState.OPEN:
            await (self._open_release(job, active) if is_buffered(job)
                   else self._announce_open(job, active.number))
            return
        parts = await self.store.list_participants(job_id, active.number)
        active.cohort = [p["client_id"] for p in parts]
        active.uploaded = [p["client_id"] for p in parts if p["status"] == "uploaded"]
        active.declined = {p["client_id"] for p in parts if p["status"] == "rejected"
                           and (p["reason"] or "").startswith("declined by the device")}
        active.bytes_up = sum(p["bytes_up"] or 0 for p in parts if p["status"] == "uploaded")
        active.seeds = {c: client_seed(spec.seed, active.number, c) for c in active.cohort}
        assert active.selected is not None
        active.selected.set_result(active.cohort)
        if active.state is RoundState.COLLECTING and spec.crypto.mode == "secagg":
            # SecAgg+ state (keys, routed shares) lives in memory only, by design
            await self._fail(job, active, "secagg round interrupted: the coordinator "
                                          "restarted, its protocol state is not persisted")
            return
        if active.state is RoundState.COLLECTING:
            if is_buffered(job):
                self._buffer(job).release_open.set()
            active.deadline = loop.call_later(
                spec.round.deadline_s,
                lambda: asyncio.ensure_future(self._on_deadline(job_id, active.number)))
            if len(active.uploaded) >= self._quorum(job, active):
                await self._close(job, active)
        else:  # CLOSING
            await self.bus.publish(topics.ROUNDS, events.round_event(
                events.CLOSING, job_id, active.number, uploaded=list(active.uploaded)),
                key=job_id.encode())

    async def finish_job(self, job_id: str, status: str, reason: str | None = None) -> None:
        job = self.jobs.pop(job_id)
        self._buffer_ended(job_id)
        self._sessions = {k: v for k, v in self._sessions.items() if k[0] != job_id}
        if job.round and job.round.deadline:
            job.round.deadline.cancel()
        await self.store.finish_job(job_id, status, reason)
        await self.bus.publish(topics.ROUNDS, events.round_event(
            events.JOB_FINISHED, job_id, job.last_round, status=status, reason=reason),
            key=job_id.encode())

    def model_vector(self, job_id: str) -> np.ndarray:
        """The current global model (a view of the published bytes); for an HE job the
        server's view, with zeros where the coordinates exist only encrypted."""
        job = self.jobs[job_id]
        return decode_model(job.model_bytes, job.layout)[2]

    # -- devices ---------------------------------------------------------------------------
    async def register_device(self, job_id: str, device_id: str, session_token: str,
                              traits: dict[str, Any] | None = None) -> None:
        if job_id not in self.jobs:
            raise LookupError(f"no running job {job_id!r}")
        if not device_id or len(device_id) > 256:
            raise ValueError("device id must be 1..256 characters")
        stored = token_hash(session_token)
        new = await self.store.register_device(job_id, device_id, stored, traits)
        self._sessions[(job_id, device_id)] = stored
        await self.bus.publish(topics.DEVICES, events.device_event(
            job_id, device_id, "registered" if new else "reconnected"), key=device_id.encode())

    async def authenticate(self, job_id: str, device_id: str, session_token: str) -> bool:
        """Whether ``session_token`` is the device's current one. A running job's session
        hashes are kept in memory (written at registration, the only place they change):
        every device call of a 10,000-device fleet would otherwise read the store."""
        stored = self._sessions.get((job_id, device_id))
        if stored is None:
            stored = await self.store.device_token_hash(job_id, device_id)
            if stored is not None and job_id in self.jobs:
                self._sessions[(job_id, device_id)] = stored
        return session_matches(session_token, stored)

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

    async def _on_model(self, data: bytes) -> None:
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
        job.version, job.model_bytes, job.release_round = version, data, active.number
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
