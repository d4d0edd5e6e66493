"""The coordinator role: owns jobs and round state, and is what devices talk to.

Consumes ``tsfl.aggregates``; produces ``tsfl.rounds``, ``tsfl.updates.raw`` and
``tsfl.models``. Every round transition is persisted in the store before the
event announcing it is published. Uploads are idempotent by (job, round, client).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record
from tsfl.config import JobSpec
from tsfl.core.layout import ParamLayout
from tsfl.pipeline import events
from tsfl.pipeline.role import BusRole
from tsfl.pipeline.selection import UniformSelector, client_seed
from tsfl.sdk.runner import RoundTask, UploadReceipt
from tsfl.storage.store import RoundState, Store, StoreError
from tsfl.strategies import build_strategy
from tsfl.wire.codecs import decode_f32
from tsfl.wire.envelope import WireError
from tsfl.wire.messages import encode_model, peek_update_meta

#: audit chain for events that belong to no job (unreadable or unknown-job uploads)
SYSTEM_AUDIT = "_system"


@dataclass
class RoundResult:
    round: int
    ok: bool
    version: int
    accepted: list[str]
    rejected: dict[str, str]
    dropped: list[str]
    num_examples: int
    train_loss: float | None
    bytes_up: int
    bytes_down: int
    reason: str | None = None


@dataclass
class _ActiveRound:
    number: int
    cohort: list[str]
    seeds: dict[str, int]
    state: RoundState = RoundState.COLLECTING
    uploaded: list[str] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    done: asyncio.Future[RoundResult] | None = None
    deadline: asyncio.TimerHandle | None = None


@dataclass
class _Job:
    job_id: str
    spec: JobSpec
    layout: ParamLayout
    version: int
    model_bytes: bytes
    client_config: Any
    round: _ActiveRound | None = None
    last_round: int = 0


class Coordinator(BusRole):
    name = "coordinator"

    def __init__(self, bus: Bus, store: Store, *, group_id: str = "coordinator",
                 max_update_bytes: int = 2 * 1024**3):
        super().__init__(bus, store, [topics.AGGREGATES], group_id)
        self.max_update_bytes = max_update_bytes
        self.jobs: dict[str, _Job] = {}

    async def stop(self) -> None:
        for job in self.jobs.values():
            if job.round and job.round.deadline:
                job.round.deadline.cancel()
        await super().stop()

    # -- jobs ------------------------------------------------------------------------------
    async def submit_job(self, job_id: str, spec: JobSpec, layout: ParamLayout,
                         initial: np.ndarray) -> None:
        """Persist the job and its initial model (version 0), then announce it."""
        if layout.total_size != initial.shape[0]:
            raise ValueError("initial model does not match its layout")
        await self.store.create_job(job_id, spec.name, spec.model_dump(mode="json"),
                                    spec.sha256(), layout.to_json())
        await self.store.save_checkpoint(job_id, 0, 0, layout.digest, initial)
        strategy = build_strategy(spec.strategy.name, **spec.strategy.params())
        self.jobs[job_id] = _Job(job_id, spec, layout, 0,
                                 encode_model(job_id, 0, initial, layout),
                                 strategy.client_config)
        await self.bus.publish(topics.ROUNDS, events.round_event(events.JOB_STARTED, job_id, 0),
                               key=job_id.encode())

    async def finish_job(self, job_id: str, status: str, reason: str | None = None) -> None:
        job = self.jobs.pop(job_id)
        if job.round and job.round.deadline:
            job.round.deadline.cancel()
        await self.store.finish_job(job_id, status, reason)
        await self.bus.publish(topics.ROUNDS, events.round_event(
            events.JOB_FINISHED, job_id, job.last_round, status=status, reason=reason),
            key=job_id.encode())

    def model_vector(self, job_id: str) -> np.ndarray:
        """The current global model (decoded view of the published bytes)."""
        from tsfl.wire.messages import decode_model

        job = self.jobs[job_id]
        return decode_model(job.model_bytes, job.layout)[2]

    # -- rounds ----------------------------------------------------------------------------
    async def open_round(self, job_id: str, available: list[str]) -> list[str]:
        job = self.jobs[job_id]
        if job.round is not None and not (job.round.done and job.round.done.done()):
            raise StoreError(f"round {job.round.number} of {job_id} is still open")
        number = job.last_round + 1
        k = job.spec.clients.per_round
        if len(available) < job.spec.round.min_updates:
            raise StoreError(f"only {len(available)} clients available, the round needs "
                             f"{job.spec.round.min_updates}")
        cohort = UniformSelector(job.spec.seed).select(number, available, min(k, len(available)))
        index = {c: i for i, c in enumerate(available)}
        seeds = {c: client_seed(job.spec.seed, number, index[c]) for c in cohort}
        await self.store.open_round(job_id, number, job.version, cohort)
        active = _ActiveRound(number, cohort, seeds,
                              done=asyncio.get_running_loop().create_future())
        active.deadline = asyncio.get_running_loop().call_later(
            job.spec.round.deadline_s, lambda: asyncio.ensure_future(self._on_deadline(job_id,
                                                                                      number)))
        job.round, job.last_round = active, number
        await self.bus.publish(topics.ROUNDS, events.round_event(
            events.COLLECTING, job_id, number, cohort=cohort, model_version=job.version),
            key=job_id.encode())
        return cohort

    async def wait_round(self, job_id: str) -> RoundResult:
        active = self.jobs[job_id].round
        assert active is not None and active.done is not None
        return await active.done

    def _quorum(self, job: _Job, active: _ActiveRound) -> int:
        need = math.ceil(job.spec.round.quorum * len(active.cohort) - 1e-9)
        return max(job.spec.round.min_updates, min(need, len(active.cohort)))

    async def _close(self, job: _Job, active: _ActiveRound) -> None:
        if active.state is not RoundState.COLLECTING:
            return
        active.state = RoundState.CLOSING
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
        if len(active.uploaded) >= job.spec.round.min_updates:
            await self._close(job, active)
        else:
            reason = (f"too few updates: {len(active.uploaded)} before the deadline, "
                      f"{job.spec.round.min_updates} needed")
            active.state = RoundState.FAILED
            await self.store.transition_round(job_id, number, RoundState.FAILED, reason=reason)
            await self.bus.publish(topics.ROUNDS, events.round_event(
                events.ROUND_FAILED, job_id, number, reason=reason), key=job_id.encode())
            self._resolve(active, RoundResult(
                number, False, job.version, [], {}, [c for c in active.cohort
                                                     if c not in active.uploaded],
                0, None, active.bytes_up, active.bytes_down, reason))

    @staticmethod
    def _resolve(active: _ActiveRound, result: RoundResult) -> None:
        if active.done is not None and not active.done.done():
            active.done.set_result(result)

    # -- the device-facing API -------------------------------------------------------------
    async def get_task(self, client_id: str) -> RoundTask | None:
        for job in self.jobs.values():
            active = job.round
            if (active and active.state is RoundState.COLLECTING and client_id in active.seeds
                    and client_id not in active.uploaded):
                config = {"seed": active.seeds[client_id], **job.client_config(active.number)}
                return RoundTask(job.job_id, active.number, job.version, config)
        return None

    async def download_model(self, job_id: str, version: int) -> bytes:
        job = self.jobs.get(job_id)
        if job is None:
            raise LookupError(f"unknown job {job_id!r}")
        if version != job.version:
            raise LookupError(f"model v{version} of {job_id} is not served (current "
                              f"v{job.version})")
        if job.round is not None:
            job.round.bytes_down += len(job.model_bytes)
        return job.model_bytes

    async def upload(self, client_id: str, data: bytes) -> UploadReceipt:
        """Accept a device's update: check it, persist it, pass it down the pipeline."""
        try:
            meta = peek_update_meta(data, self.max_update_bytes, verify=True)
        except WireError as exc:
            return await self._refuse(None, None, client_id, exc.code, str(exc))
        job = self.jobs.get(meta["job_id"])
        if job is None:
            return await self._refuse(None, None, client_id, "unknown_job",
                                      f"no running job {meta['job_id']!r}")
        active = job.round
        if meta["client_id"] != client_id:
            return await self._refuse(job, active, client_id, "identity",
                                      "update names another client")
        if active is None or meta["round"] != active.number:
            return await self._refuse(job, active, client_id, "wrong_round",
                                      f"round {meta['round']} is not open")
        if client_id not in active.seeds:
            return await self._refuse(job, active, client_id, "not_selected",
                                      f"not selected for round {active.number}")
        if active.state is not RoundState.COLLECTING:
            return await self._refuse(job, active, client_id, "round_closed",
                                      f"round {active.number} no longer takes updates")
        if meta["model_version"] != job.version:
            return await self._refuse(job, active, client_id, "stale_model",
                                      f"trained on v{meta['model_version']}, current "
                                      f"v{job.version}")
        fresh = await self.store.record_upload(
            job.job_id, active.number, client_id, num_examples=meta["num_examples"],
            bytes_up=len(data), metrics={})
        if not fresh:
            return await self._refuse(job, active, client_id, "duplicate",
                                      "this update was already accepted")
        active.uploaded.append(client_id)
        active.bytes_up += len(data)
        await self.bus.publish(topics.UPDATES_RAW, data,
                               key=f"{job.job_id}:{active.number}:{client_id}".encode())
        if len(active.uploaded) >= self._quorum(job, active):
            await self._close(job, active)
        return UploadReceipt(True)

    async def _refuse(self, job: _Job | None, active: _ActiveRound | None, client_id: str,
                      code: str, message: str) -> UploadReceipt:
        # Refusals that cannot be tied to a running job go to the system audit chain.
        await self.store.append_audit(job.job_id if job else SYSTEM_AUDIT, "upload.refused", {
            "round": active.number if active else None, "client_id": client_id,
            "code": code, "message": message})
        self.log.info("refused upload from %s: %s (%s)", client_id, code, message)
        return UploadReceipt(False, code, message)

    # -- results from the aggregator -------------------------------------------------------
    async def handle(self, record: Record) -> None:
        await self._on_aggregate(*events.parse_aggregate(record.value))
        await self.consumer.commit(record)

    async def _on_aggregate(self, msg: dict[str, Any], payload: memoryview) -> None:
        job = self.jobs.get(msg["job"])
        if job is None or job.round is None or job.round.number != msg["round"]:
            return  # replay of an older round's result
        active = job.round
        if active.state is not RoundState.CLOSING:
            return
        accepted, rejected = list(msg["accepted"]), dict(msg["rejected"])
        dropped = [c for c in active.cohort if c not in active.uploaded]
        if not msg["ok"]:
            active.state = RoundState.FAILED
            await self.store.transition_round(job.job_id, active.number, RoundState.FAILED,
                                              reason=msg.get("reason"))
            self._resolve(active, RoundResult(active.number, False, job.version, [], rejected,
                                              dropped, 0, None, active.bytes_up,
                                              active.bytes_down, msg.get("reason")))
            return
        if msg["version"] != job.version + 1:
            raise StoreError(f"aggregate of round {active.number} is v{msg['version']}, "
                             f"expected v{job.version + 1}")
        vector = decode_f32(payload, job.layout.total_size)
        await self.store.complete_round(job.job_id, active.number, accepted=accepted,
                                        rejected=rejected, dropped=dropped)
        active.state = RoundState.PUBLISHED
        job.version = msg["version"]
        job.model_bytes = encode_model(job.job_id, job.version, vector, job.layout,
                                       {"round": active.number})
        await self.bus.publish(topics.MODELS, job.model_bytes, key=job.job_id.encode())
        await self.bus.publish(topics.ROUNDS, events.round_event(
            events.PUBLISHED, job.job_id, active.number, model_version=job.version),
            key=job.job_id.encode())
        self._resolve(active, RoundResult(
            active.number, True, job.version, accepted, rejected, dropped,
            int(msg.get("num_examples") or 0), msg.get("train_loss"), active.bytes_up,
            active.bytes_down))
