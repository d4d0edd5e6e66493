"""The coordinator's jobs: submitting one (its initial model stored as version 0), picking
a RUNNING job up again after a restart from the store alone, finishing it, and its
devices' enrolment and sessions. A part of :class:`~tsfl.pipeline.coordinator.Coordinator`
(:mod:`~tsfl.pipeline.coordinator_base` says how the parts fit)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from tsfl.bus import topics
from tsfl.config import JobSpec
from tsfl.core.layout import ParamLayout
from tsfl.he import HeError, HeJob
from tsfl.he.job import he_size, needs_ceremony, threshold_keyed, threshold_params
from tsfl.pipeline import events
from tsfl.pipeline.coordinator_fedbuff import BufferDesk, is_buffered
from tsfl.pipeline.credentials import enrollment_digest, session_matches
from tsfl.pipeline.job_state import ActiveRound, JobState
from tsfl.pipeline.selection import client_seed
from tsfl.pipeline.strategy_build import strategy_from_spec
from tsfl.pipeline.task_config import local_dp_config, token_hash, uplink_config
from tsfl.storage.rows import job_layout
from tsfl.storage.store import RoundState
from tsfl.wire.he import he_message_bounds
from tsfl.wire.messages import decode_model, encode_model


class JobDesk(BufferDesk):
    """A part of :class:`~tsfl.pipeline.coordinator.Coordinator` (see the module)."""

    _sessions: dict[tuple[str, str], str]

    # -- jobs ------------------------------------------------------------------------------
    async def submit_job(self, job_id: str, spec: JobSpec, layout: ParamLayout,
                         initial: np.ndarray, enrollment_token: str | None = None,
                         owner: str | None = None) -> None:
        """Persist the job and its initial model (version 0), then announce it."""
        if layout.total_size != initial.shape[0]:
            raise ValueError("initial model does not match its layout")
        strategy_from_spec(spec)  # an installed strategy's options fail here, not at release
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
        layout = job_layout(row)
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
        job.enrolled = await self.store.count_devices(job_id)
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
        if new:
            self.jobs[job_id].enrolled += 1
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
