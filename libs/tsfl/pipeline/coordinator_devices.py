"""The coordinator's device-facing API: tasks, model downloads, uploads (each refusal
checked and audited, counted once per (job, round, client)), declines and the end of
collecting."""

from __future__ import annotations

import asyncio
import math

from tsfl.bus import topics
from tsfl.core.protocol import RoundTask, UploadReceipt
from tsfl.he import HeError
from tsfl.he.signing import refusal_code
from tsfl.pipeline import events
from tsfl.pipeline.coordinator_base import CoordinatorBase
from tsfl.pipeline.job_state import (
    NORM_MIN_HISTORY,
    ActiveRound,
    JobState,
    UploadRefused,
)
from tsfl.pipeline.released_models import LATEST
from tsfl.pipeline.routing import update_key
from tsfl.pipeline.task_config import ingest_topic, secagg_task_config
from tsfl.privacy.clipping import l2_norm
from tsfl.storage.store import RoundState
from tsfl.wire.envelope import WireError
from tsfl.wire.messages import (
    decode_model,
    decode_update,
    encode_model_delta,
    peek_update_meta,
)

#: the task polls a second a coordinator spreads its enrolled devices over (one process
#: serves ~1–2k calls a second on this 2-core machine: benchmarks/README.md, "A fleet")
POLL_BUDGET_PER_S = 400.0
#: bounds of the advised interval: a small fleet still sees a round open within a second
MIN_POLL_S, MAX_POLL_S = 0.5, 60.0


class DeviceDesk(CoordinatorBase):
    """A part of :class:`~tsfl.pipeline.coordinator.Coordinator` (see the module)."""

    def poll_after_s(self, job_id: str) -> float:
        """How long a device of ``job_id`` that got no task should wait before it asks
        again: the devices enrolled in every running job, each asking at this interval,
        make about :data:`POLL_BUDGET_PER_S` polls a second — so polls stay fast as the
        fleet grows. Never more than a quarter of the job's round deadline (jittered, at
        most 3/8 of it), so that another job's enrolments cannot make this job's devices
        miss its rounds."""
        enrolled = sum(job.enrolled for job in self.jobs.values())
        job = self.jobs.get(job_id)
        cap = min(MAX_POLL_S, job.spec.round.deadline_s / 4) if job else MAX_POLL_S
        return max(MIN_POLL_S, min(cap, enrolled / POLL_BUDGET_PER_S))

    # -- the device-facing API -------------------------------------------------------------
    async def get_task(self, client_id: str, job_id: str | None = None) -> RoundTask | None:
        jobs = [self.jobs[job_id]] if job_id in self.jobs else (
            [] if job_id else list(self.jobs.values()))
        for job in jobs:
            active = job.round
            if (active and active.state is RoundState.COLLECTING and client_id in active.seeds
                    and client_id not in active.uploaded and client_id not in active.declined):
                config = {"seed": active.seeds[client_id], "round": active.number,
                          **job.client_config(active.number)}
                if job.local_dp is not None:
                    config["local_dp"] = job.local_dp
                if job.uplink is not None:
                    config["compression"] = {**job.uplink,
                                             **active.codec_plan.get(client_id, {})}
                if job.spec.compression.downlink == "delta":
                    config["downlink"] = "delta"
                if job.he is not None:
                    config["he"] = job.he.task_config()
                if active.secagg is not None:
                    config["secagg"] = secagg_task_config(active.secagg.config, job.spec)
                if self._devices_evaluate(job):
                    config["evaluate"] = True
                return RoundTask(job.job_id, active.number, job.version, config)
        return None

    async def task_available(self, client_id: str, job_id: str) -> bool:
        """Whether :meth:`get_task` would give this device a task now (a heartbeat's
        question: it must not take anything)."""
        return await self.get_task(client_id, job_id) is not None

    async def download_model(self, job_id: str, version: int,
                             have_version: int | None = None) -> bytes:
        """The model of ``version`` (:data:`~tsfl.pipeline.released_models.LATEST`: the
        current one): a lossless delta when the device holds an earlier version still
        kept (``compression.downlink: delta``), else the full model. A finished job's
        final model comes from the store."""
        job = self.jobs.get(job_id)
        if job is None:
            return (await self.released.final(job_id, version))[1]
        if version == LATEST:
            version = job.version
        if version != job.version:
            raise LookupError(f"model v{version} of {job_id} is not served (current "
                              f"v{job.version})")
        data = job.model_bytes
        if have_version is not None and have_version in job.history:
            cached = job.delta_cache.get(have_version)
            if cached is None:
                current = decode_model(job.model_bytes, job.layout)[2]
                cached = await asyncio.to_thread(
                    encode_model_delta, job_id, job.version, current, have_version,
                    job.history[have_version], job.layout)
                job.delta_cache[have_version] = cached
            if len(cached) < len(data):
                data = cached
        if job.round is not None:
            job.round.bytes_down += len(data)
        return data

    async def record_transfer(self, job_id: str, client_id: str, direction: str,
                              nbytes: int, seconds: float) -> None:
        """A timed transfer to or from a device: the selector's link estimates feed on it."""
        job = self.jobs.get(job_id)
        if job is None or not (nbytes > 0 and math.isfinite(seconds) and seconds > 0):
            return
        active = job.round
        if direction == "up" and active is not None and active.state is RoundState.COLLECTING:
            active.slowest_upload_s = max(active.slowest_upload_s or 0.0, seconds)
        if job.spec.compression.adaptive is None:
            return
        await self.bus.publish(topics.DEVICES, events.device_event(
            job_id, client_id, "transfer", direction=direction, bytes=int(nbytes),
            seconds=float(seconds)), key=client_id.encode())

    async def upload(self, client_id: str, data: bytes | bytearray) -> UploadReceipt:
        """Accept a device's update: check it, persist it, pass it down the pipeline."""
        try:
            meta = peek_update_meta(data, self.max_update_bytes)
        except WireError as exc:
            return await self._refuse(None, None, client_id, exc.code, str(exc))
        job = self.jobs.get(meta["job_id"])
        if job is None:
            return await self._refuse(None, None, client_id, "unknown_job",
                                      f"no running job {meta['job_id']!r}")
        if job.spec.crypto.mode == "secagg":
            return await self._refuse(job, job.round, client_id, "secagg",
                                      "this job aggregates with SecAgg+: devices send masked "
                                      "inputs through the secagg stages, never an update")
        if job.spec.crypto.mode == "he" and job.he is None:
            return await self._refuse(job, job.round, client_id, "he_key",
                                      "the job's key ceremony has not completed")
        section = None
        try:  # all of it (checksum, layout, sizes, values): the device hears what is wrong
            update = decode_update(data, job.layout, max_bytes=self.max_update_bytes,
                                   he_clear=job.he.clear if job.he else None)
            if job.he is not None:  # key, sizes, residues, the device's signature
                assert update.sealed is not None
                section = job.he.check_section(update.sealed, job.job_id, meta["round"],
                                               client_id)
        except WireError as exc:
            return await self._refuse(job, job.round, client_id, exc.code, str(exc))
        except HeError as exc:
            return await self._refuse(job, job.round, client_id, refusal_code(exc.code),
                                      str(exc))
        active = job.round
        if meta["client_id"] != client_id:
            return await self._refuse(job, active, client_id, "identity",
                                      "update names another client")
        if active is None or meta["round"] != active.number:
            await self._seen_late(job, meta["round"], client_id, len(data))
            return await self._refuse(job, active, client_id, "wrong_round",
                                      f"round {meta['round']} is not open")
        if client_id not in active.seeds:
            return await self._refuse(job, active, client_id, "not_selected",
                                      f"not selected for round {active.number}")
        if active.state is not RoundState.COLLECTING:
            await self._seen_late(job, active.number, client_id, len(data))
            return await self._refuse(job, active, client_id, "round_closed",
                                      f"round {active.number} no longer takes updates")
        if meta["model_version"] != job.version:
            await self._seen_late(job, active.number, client_id, len(data))
            return await self._refuse(job, active, client_id, "stale_model",
                                      f"trained on v{meta['model_version']}, current "
                                      f"v{job.version}")
        if client_id in active.uploaded:
            return await self._refuse(job, active, client_id, "duplicate",
                                      "this update was already accepted")
        if section is not None and job.he is not None and job.he.keying == "threshold":
            committed = active.he_commits.digest(client_id) if active.he_commits else None
            if committed != section.entry["d"]:  # commit before reveal
                return await self._refuse(job, active, client_id, "he_commit", (
                    "this section is not the one committed to" if committed else
                    "no commitment to this section among the round's closed commitments"))
        bound = self._norm_bound(job)
        norm = l2_norm(update.delta)
        if bound is not None and not norm <= bound:
            return await self._refuse(job, active, client_id, "norm_bound",
                                      f"update norm {norm:.4g} exceeds this round's bound "
                                      f"{bound:.4g}")
        active.norms.append(norm)
        # Publish, then persist, then acknowledge: a crash in between leaves the update on
        # the bus but unrecorded, the device retries, and the aggregator (idempotent by
        # client) counts it once. Never the reverse, which could lose an accepted update.
        await self.bus.publish(ingest_topic(job.spec), data,
                               key=update_key(job.spec, job.job_id, active.number, client_id))
        fresh = await self.store.record_upload(
            job.job_id, active.number, client_id, num_examples=meta["num_examples"],
            bytes_up=len(data), metrics={})
        if not fresh:
            return await self._refuse(job, active, client_id, "duplicate",
                                      "this update was already accepted")
        active.count_upload(client_id, meta["codecs"], len(data))
        if update.sealed is not None:
            active.sealed_bytes += len(update.sealed)
            active.sealed_values += int(job.he.selected.size) if job.he else 0
        if len(active.uploaded) >= self._quorum(job, active):
            await self._close(job, active)
        return UploadReceipt(True)

    async def _seen_late(self, job: JobState, number: int, client_id: str, nbytes: int) -> None:
        """Local DP: a selected device's noised update that arrives too late still reached
        the server, so the privacy ledger must charge it (its participant row keeps the
        size; the status stays)."""
        if job.local_dp is not None and isinstance(number, int):
            await self.store.note_upload_seen(job.job_id, number, client_id, nbytes)

    @staticmethod
    def _norm_bound(job: JobState) -> float | None:
        """The L2 bound on this round's updates: the spec's, else — once
        :data:`NORM_MIN_HISTORY` rounds are published — ``norm_bound_factor`` × the
        largest of the last :data:`NORM_WINDOW` rounds' median norms (devices sending
        tiny updates lower it only by holding the majority of every round in the window:
        an honest majority cannot be locked out), always capped at 1e4·√P (a single
        update cannot blow the model up, even without a robust rule). None for central
        DP (the server clips every update anyway)."""
        if job.spec.privacy.mode == "central":
            return None
        r = job.spec.round
        if r.max_update_norm is not None:
            return r.max_update_norm
        cap = 1e4 * math.sqrt(max(job.layout.total_size, 1))
        if len(job.previous_norms) >= NORM_MIN_HISTORY:
            reference = max(job.previous_norms)  # O(window), per upload
            return min(cap, r.norm_bound_factor * reference)
        return cap

    def upload_bound(self, job_id: str, client_id: str) -> int:
        """The most bytes an update of ``client_id`` to ``job_id`` may take — checked before
        the server buffers a byte of it. Raises :class:`UploadRefused` when no upload is
        expected from it now (unknown job, SecAgg+ job, not selected, round closed,
        already uploaded). The bound: every float32-or-smaller encoding of the model
        (f32 is 4 bytes a value; top-k with its indices at most 8) plus a header, and
        for HE jobs the ciphertexts."""
        job = self.jobs.get(job_id)
        if job is None:
            raise UploadRefused("unknown_job", f"no running job {job_id!r}")
        if job.spec.crypto.mode == "secagg":
            raise UploadRefused("secagg", "this job aggregates with SecAgg+: devices never "
                                          "upload an update")
        if job.spec.crypto.mode == "he" and job.he is None:
            raise UploadRefused("he_key", "the job's key ceremony has not completed")
        active = job.round
        if active is None or client_id not in active.seeds:
            raise UploadRefused("not_selected", "not selected for the open round")
        if active.state is not RoundState.COLLECTING:
            raise UploadRefused("round_closed", f"round {active.number} no longer takes "
                                                "updates")
        if client_id in active.uploaded or client_id in active.declined:
            raise UploadRefused("duplicate", "this device already answered this round")
        bound = 8 * job.layout.total_size + 64 * 1024
        if job.he is not None:  # the ciphertexts: count × 2 polynomials × N coefficients
            bound += job.he.section_bound()
        return min(bound, self.max_update_bytes)

    async def decline_task(self, client_id: str, job_id: str, number: int, code: str,
                           message: str) -> None:
        """A selected device refuses its task (below its owner's privacy floor, or past its
        own budget): recorded as a rejected participant and audited; the round stops
        waiting for it. Anything else (not selected, already uploaded) is ignored."""
        job = self.jobs.get(job_id)
        active = job.round if job is not None else None
        if (job is not None and active is not None and active.number == number
                and active.secagg is not None and client_id in active.seeds
                and active.state is RoundState.COLLECTING):
            # a SecAgg+ device that stopped (secagg_*: a protocol check failed, it names
            # which — audited even after its masked input) or declined its task; the
            # stages stop waiting for it, and they settle the round
            if code.startswith("secagg_"):
                await self.store.append_audit(job_id, "secagg.device_abort", {
                    "round": number, "client_id": client_id, "code": code[:64],
                    "message": message[:512]})
                self.log.warning("%s stopped SecAgg+ round %d of %s: %s (%s)", client_id,
                                 number, job_id, code[:64], message[:512])
            if client_id not in active.uploaded and client_id not in active.declined:
                active.declined.add(client_id)
                await self.store.reject_participant(
                    job_id, number, client_id,
                    f"declined by the device ({code[:64]}): {message[:512]}",
                    actor=f"device:{client_id}")
            await active.secagg.withdraw(client_id)
            return
        if (job is None or active is None or active.number != number
                or active.state is not RoundState.COLLECTING or client_id not in active.seeds
                or client_id in active.uploaded or client_id in active.declined):
            return
        code, message = code[:64], message[:512]
        active.declined.add(client_id)
        if active.he_commits is not None:  # its commitment is not waited for
            active.he_commits.withdraw(client_id)
        await self.store.reject_participant(job_id, number, client_id,
                                            f"declined by the device ({code}): {message}",
                                            actor=f"device:{client_id}")
        self.log.info("%s declined round %d of %s: %s (%s)", client_id, number, job_id,
                      code, message)
        await self._settle_if_answered(job, active)

    async def end_collecting(self, job_id: str) -> None:
        """Simulation: every device of the open round has run, so nothing more will come
        (uploads refused for their content included) — settle the round now rather than
        at its deadline."""
        job = self.jobs.get(job_id)
        active = job.round if job is not None else None
        if job is None or active is None or active.state is not RoundState.COLLECTING:
            return
        if len(active.uploaded) >= job.spec.round.min_updates:
            await self._close(job, active)
        else:
            await self._fail(job, active, f"only {len(active.uploaded)} update(s) from "
                                          f"{len(active.cohort)} selected devices")

    async def _settle_if_answered(self, job: JobState, active: ActiveRound) -> None:
        """Every selected device uploaded, declined or was refused for good: close the
        round now (or fail it below ``min_updates``) instead of waiting for its deadline."""
        answered = len(active.uploaded) + len(active.declined)
        if answered < len(active.cohort) or active.state is not RoundState.COLLECTING:
            return
        if len(active.uploaded) >= job.spec.round.min_updates:
            await self._close(job, active)
        else:
            await self._fail(job, active, f"only {len(active.uploaded)} update(s): "
                                          f"{len(active.declined)} device(s) declined or "
                                          "were refused")
