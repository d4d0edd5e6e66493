"""The coordinator role: owns jobs and round state, and is what devices talk to.

Consumes ``tsfl.cohorts`` (from the selector), ``tsfl.models`` (released by the privacy
stage) and ``tsfl.failures`` (rounds that could not be aggregated or released); produces
``tsfl.rounds``, ``tsfl.devices`` and the updates: ``tsfl.updates.raw`` for central-DP
jobs, for the others ``tsfl.updates.clipped`` directly, or ``tsfl.updates.direct`` when no
robust rule judges them. Every round transition is persisted in the store before the
event announcing it is published. Uploads are idempotent by (job, round, client).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record
from tsfl.compress import CodecChain, CodecError
from tsfl.config import JobSpec
from tsfl.core.layout import ParamLayout
from tsfl.core.protocol import RoundTask, UploadReceipt
from tsfl.errors import TsflError
from tsfl.he import HeError, HeJob
from tsfl.he.job import he_size, needs_ceremony, threshold_keyed, threshold_params
from tsfl.he.signing import refusal_code
from tsfl.he.threshold.keys import JobKey
from tsfl.he.threshold.params import ThresholdParams
from tsfl.pipeline import events, registry
from tsfl.pipeline.credentials import enrollment_digest, session_hash, session_matches
from tsfl.pipeline.evaluation import ServerEvaluator
from tsfl.pipeline.federated_eval import EvaluationRefused, VersionEvaluation, check_report
from tsfl.pipeline.he_ceremony import CeremonyRelay
from tsfl.pipeline.he_commit import CommitBoard
from tsfl.pipeline.he_opening import OpeningStages
from tsfl.pipeline.released_models import LATEST, ReleasedModels
from tsfl.pipeline.role import BusRole
from tsfl.pipeline.round_metrics import observe_evaluation, observe_round_end
from tsfl.pipeline.secagg_stages import SecAggOutcome, SecAggRefused, SecAggStages
from tsfl.pipeline.selection import client_seed
from tsfl.pipeline.strategy_build import strategy_from_spec
from tsfl.privacy.clipping import l2_norm
from tsfl.privacy.plan import build_plan
from tsfl.secagg.extras import Extras
from tsfl.secagg.protocol import RoundConfig, round_id_for
from tsfl.secagg.ring import RingSpec, dequantize_sum
from tsfl.storage.store import RoundState, Store, StoreError
from tsfl.wire.envelope import WireError
from tsfl.wire.he import he_message_bounds
from tsfl.wire.messages import (
    decode_model,
    decode_update,
    encode_model,
    encode_model_delta,
    model_sealed,
    peek_update_meta,
)


class UploadRefused(TsflError):
    """No upload of this device is expected now; ``code`` is the refusal's."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


#: audit chain for events that belong to no job (unreadable or unknown-job uploads)
SYSTEM_AUDIT = "_system"
#: published rounds whose update norms set the default norm bound
NORM_WINDOW = 5
NORM_MIN_HISTORY = 3
#: earlier model versions kept for downlink deltas (compression.downlink: delta)
DOWNLINK_WINDOW = 8


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
    epsilon: float | None = None  # privacy spent after this round (DP jobs)
    codecs: dict[str, dict[str, int]] = field(default_factory=dict)  # chain → updates, bytes
    slowest_upload_s: float | None = None  # the slowest timed upload (the round's straggler)
    sealed_bytes: int = 0  # HE: encrypted bytes received (all accepted uploads)
    sealed_values: int = 0  # HE: how many float values they encrypt


@dataclass
class _ActiveRound:
    number: int
    state: RoundState = RoundState.OPEN
    cohort: list[str] = field(default_factory=list)
    seeds: dict[str, int] = field(default_factory=dict)
    uploaded: list[str] = field(default_factory=list)
    declined: set[str] = field(default_factory=set)  # refused the task (device's privacy)
    bytes_up: int = 0
    bytes_down: int = 0
    codec_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    codec_plan: dict[str, dict[str, Any]] = field(default_factory=dict)  # adaptive, per device
    slowest_upload_s: float | None = None
    sealed_bytes: int = 0  # HE: encrypted sections received
    sealed_values: int = 0  # HE: the values they encrypt
    norms: list[float] = field(default_factory=list)  # L2 norms of the accepted uploads
    secagg: SecAggStages | None = None  # secagg jobs: the SecAgg+ round in progress
    he_commits: CommitBoard | None = None  # threshold HE: the round's section commitments
    selected: asyncio.Future[list[str]] | None = None
    done: asyncio.Future[RoundResult] | None = None
    deadline: asyncio.TimerHandle | None = None
    opened_at: float = field(default_factory=time.monotonic)  # for the round's duration


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
    local_dp: dict[str, Any] | None = None  # sent with each task when devices add the noise
    uplink: dict[str, Any] | None = None  # compression settings sent with each task
    history: dict[int, np.ndarray] = field(default_factory=dict)  # version → model (deltas)
    delta_cache: dict[int, bytes] = field(default_factory=dict)  # base → delta to current
    he: HeJob | None = None  # HE jobs: public key set and the encrypted coordinates
    he_opening: OpeningStages | None = None  # threshold HE: the current model's opening
    he_ceremony: CeremonyRelay | None = None  # threshold HE: the silos' key ceremony
    he_shape: tuple[ThresholdParams, int] | None = None  # threshold HE: params, size
    previous_norms: collections.deque[float] = field(  # recent rounds' median update norms
        default_factory=lambda: collections.deque(maxlen=NORM_WINDOW))
    evaluator: ServerEvaluator | None = None  # distributed: evaluates each release
    last_test_loss: float | None = None
    fed_eval: VersionEvaluation | None = None  # devices' reports on the current version
    release_round: int | None = None  # the round that released the current version


def ingest_topic(spec: JobSpec) -> str:
    """Where an accepted update goes: the he service for HE jobs; the privacy stage when
    the server clips (central DP); otherwise straight to the byzantine stage and the
    aggregator, or to the aggregator alone when no robust rule judges it (one broker hop
    fewer, and one read of the payload fewer)."""
    if spec.crypto.mode == "he":
        return topics.UPDATES_ENCRYPTED
    if spec.privacy.mode == "central":
        return topics.UPDATES_RAW
    return topics.screened_topic(spec.robust.aggregator)


def uplink_config(spec: JobSpec) -> dict[str, Any] | None:
    """The compression settings sent with every task (None: plain float32, say nothing)."""
    c = spec.compression
    u = c.uplink
    if u.chain == ["f32"] and c.skip_below == 0 and c.adaptive is None:
        return None
    return {"chain": list(u.chain), "ratio": u.ratio, "block": u.block, "levels": u.levels,
            "error_feedback": u.error_feedback, "skip_below": c.skip_below}


def adaptive_request(spec: JobSpec, model_size: int) -> dict[str, Any] | None:
    """What the selector needs to plan per-device codecs for a round (None: not adaptive)."""
    a = spec.compression.adaptive
    if a is None:
        return None
    lossless = CodecChain.parse(spec.compression.uplink.chain).lossless
    return {"budget_s": spec.round.deadline_s * a.deadline_fraction, "n": model_size,
            "min_ratio": a.min_ratio, "block": spec.compression.uplink.block,
            "lossless": lossless}


def _plan_entry(raw: Any) -> dict[str, Any] | None:
    """A selector's codec choice for one device, checked (None when unusable)."""
    if not isinstance(raw, dict):
        return None
    try:
        chain = CodecChain.parse(raw.get("chain") or [])
        ratio = float(raw.get("ratio", 1.0))
    except (CodecError, TypeError, ValueError):
        return None
    if not 0 < ratio <= 1:
        return None
    return {"chain": list(chain.names), "ratio": ratio}


def poisson_rate(spec: JobSpec) -> float | None:
    """The per-client inclusion probability of a central-DP job with Poisson sampling."""
    p = spec.privacy
    if p.mode == "central" and p.sampling == "poisson":
        return spec.clients.per_round / spec.clients.count
    return None


def secret_cohorts(spec: JobSpec) -> bool:
    """Whether the job's cohorts are drawn from a CSPRNG: every DP job but a seeded
    (reproducible, not private) simulation."""
    return spec.private and not spec.seeded_privacy


def local_dp_config(spec: JobSpec, model_size: int) -> dict[str, Any] | None:
    """The job's local-DP settings as each task states them, or None. A device holds them
    against its own floor and ledger, draws the noise itself and derives the sensitivity
    itself: no seed, noise mode or sensitivity is sent."""
    plan = build_plan(spec, model_size)
    if plan is None or plan.mode != "local":
        return None
    return {"mechanism": plan.mechanism, "clip_norm": plan.clip_norm,
            "noise_multiplier": plan.noise_multiplier, "epsilon": plan.event.epsilon,
            "delta": plan.delta, "target_epsilon": plan.target_epsilon}


def secagg_extras(spec: JobSpec) -> Extras:
    """The ring coordinates after the update that carry n and the metrics."""
    s = spec.crypto.secagg
    return Extras(s.quant_bits, tuple(s.metrics), s.metric_clip)


def secagg_round_config(job_id: str, spec: JobSpec, number: int, cohort: list[str],
                        size: int) -> RoundConfig:
    """The public parameters of a SecAgg+ round: every party derives them alike ((k, t)
    from the threat model; the graph seed later, from the signed advertisements).
    Raises ``ValueError`` when no graph fits this cohort."""
    s = spec.crypto.secagg
    return RoundConfig.build(round_id_for(job_id, number), cohort,
                             RingSpec(s.clip, s.quant_bits, len(cohort)),
                             size + secagg_extras(spec).width, corruption=s.corruption,
                             dropout=s.dropout, security_bits=s.security_bits,
                             threshold_fraction=s.threshold_fraction,
                             key_agreement=s.key_agreement)


def secagg_task_config(config: RoundConfig, spec: JobSpec) -> dict[str, Any]:
    s = spec.crypto.secagg
    return {"round_id": config.round_id.hex(), "cohort": list(config.cohort),
            "ring": {"clip": config.ring.clip, "quant_bits": config.ring.quant_bits,
                     "clients": config.ring.clients},
            "size": config.size - secagg_extras(spec).width,
            "neighbours": config.neighbours, "threshold": config.threshold,
            "corruption": config.corruption, "dropout": config.dropout,
            "security_bits": config.security_bits,
            "threshold_fraction": config.threshold_fraction,
            "key_agreement": config.key_agreement, "metrics": list(s.metrics),
            "metric_clip": s.metric_clip, "weight_unit": s.weight_unit}


token_hash = session_hash  # the stored form of a session token


class Coordinator(BusRole):
    name = "coordinator"

    def __init__(self, bus: Bus, store: Store, *, group_id: str = "coordinator",
                 max_update_bytes: int = 2 * 1024**3):
        super().__init__(bus, store, [topics.COHORTS, topics.MODELS, topics.FAILURES],
                         group_id)
        self.max_update_bytes = max_update_bytes
        self.jobs: dict[str, _Job] = {}
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

    async def _record_release(self, job: _Job, result: RoundResult,
                              vector: np.ndarray) -> None:
        """Store a published round's metrics: the released model's server-side evaluation
        (:mod:`tsfl.pipeline.evaluation`), its training loss, ε and bytes."""
        number = result.round
        try:
            metrics: dict[str, Any] = {
                "train_loss": result.train_loss, "epsilon": result.epsilon,
                "bytes_up": result.bytes_up, "bytes_down": result.bytes_down,
                "accepted": len(result.accepted)}
            if job.evaluator is None and ServerEvaluator.applies(job.spec):
                job.evaluator = ServerEvaluator(job.spec)
            if job.evaluator is not None and number % job.spec.evaluation.every == 0:
                evaluation = await job.evaluator.evaluate(vector)
                if evaluation is not None:
                    metrics.update(evaluation)
                    observe_evaluation(job.job_id, evaluation["test_accuracy"],
                                       evaluation["test_loss"], job.last_test_loss)
                    job.last_test_loss = evaluation["test_loss"]
                    self.log.info("round %d: test accuracy %.4f, loss %.4f", number,
                                  evaluation["test_accuracy"], evaluation["test_loss"],
                                  extra={"job": job.job_id, "round": number})
            await self._merge_round_metrics(job.job_id, number, metrics)
            await registry.announce(self.bus, self.store, job.job_id, job.spec, job.layout,
                                    result.version, number, vector, metrics, result.epsilon)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # metrics never fail a job
            self.log.warning("recording round %d's metrics failed: %s", number, exc,
                             extra={"job": job.job_id, "round": number})

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
               model_bytes: bytes, last_round: int = 0) -> _Job:
        strategy = strategy_from_spec(spec)  # its client_config: FedProx's μ, client lr
        job = _Job(job_id, spec, layout, version, model_bytes, strategy.client_config,
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
        active = _ActiveRound(last["number"], RoundState(last["state"]),
                              selected=loop.create_future(), done=loop.create_future())
        job.round = active
        if active.state is RoundState.OPEN:
            await self._announce_open(job, active.number)
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
        new = await self.store.register_device(job_id, device_id, token_hash(session_token),
                                               traits)
        await self.bus.publish(topics.DEVICES, events.device_event(
            job_id, device_id, "registered" if new else "reconnected"), key=device_id.encode())

    async def authenticate(self, job_id: str, device_id: str, session_token: str) -> bool:
        stored = await self.store.device_token_hash(job_id, device_id)
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
        active = _ActiveRound(number, selected=loop.create_future(), done=loop.create_future())
        job.round, job.last_round = active, number
        await self._announce_open(job, number)
        assert active.selected is not None
        return await asyncio.wait_for(asyncio.shield(active.selected), timeout)

    async def _announce_open(self, job: _Job, number: int) -> None:
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
            checked = {str(c): _plan_entry(e) for c, e in plan.items() if c in active.seeds}
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

    async def _fail(self, job: _Job, active: _ActiveRound, reason: str,
                    rejected: dict[str, str] | None = None) -> None:
        active.state = RoundState.FAILED
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
    def _resolve(active: _ActiveRound, result: RoundResult, job: _Job | None = None) -> None:
        if job is not None:
            observe_round_end(job.job_id, result, active.opened_at,
                              job.spec.privacy.target_epsilon)
        if active.done is not None and not active.done.done():
            active.done.set_result(result)

    # -- federated evaluation (pipeline.federated_eval) ------------------------------------
    def _devices_evaluate(self, job: _Job) -> bool:
        """Whether this job's tasks ask devices to evaluate the model they are sent."""
        mode = job.spec.evaluation.federated
        if not self.evaluate_releases or mode == "off":
            return False  # embedded runs evaluate centrally, on the whole test split
        if mode == "on":
            return True
        if job.spec.private or job.spec.crypto.mode != "none":
            return False  # DP and crypto protect no per-device metric
        return not ServerEvaluator.applies(job.spec) or (
            job.evaluator is not None and job.evaluator.unusable)

    async def report_evaluation(self, client_id: str, job_id: str, version: int, loss: float,
                                num_examples: int, metrics: dict[str, float]) -> bool:
        """A device's evaluation of model ``version`` on its own data; True when taken,
        False for a repeat. Raises :class:`EvaluationRefused` (code ``invalid``,
        ``not_requested``, ``not_in_cohort``)."""
        job = self.jobs.get(job_id)
        if job is None or not self._devices_evaluate(job):
            raise EvaluationRefused("not_requested", "this job does not ask its devices "
                                                     "to evaluate")
        check_report(loss, num_examples, metrics)
        active = job.round
        if version != job.version or active is None or client_id not in active.seeds:
            raise EvaluationRefused("not_in_cohort", f"only a device of the current cohort "
                                    f"reports, on the model it was sent (v{job.version})")
        if job.fed_eval is None or job.fed_eval.version != version:
            job.fed_eval = VersionEvaluation(version)
        return job.fed_eval.add(client_id, loss, num_examples, metrics)

    def _settle_device_evaluations(self, job: _Job) -> None:
        """The current version is being replaced: store its devices' evaluations in the
        metrics of the round that released it."""
        summary = (job.fed_eval.summary() if job.fed_eval is not None
                   and job.fed_eval.version == job.version else {})
        job.fed_eval = None
        if summary and job.release_round:
            self._background(self._merge_round_metrics(job.job_id, job.release_round,
                                                       summary))

    async def _merge_round_metrics(self, job_id: str, number: int,
                                   metrics: dict[str, Any]) -> None:
        """Add ``metrics`` to round ``number``'s (one writer at a time: the server's and
        the devices' evaluations of a release arrive separately)."""
        async with self._metrics_lock:
            row = await self.store.get_round(job_id, number)
            await self.store.set_round_metrics(job_id, number,
                                               {**((row or {}).get("metrics") or {}),
                                                **metrics})

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

    async def upload(self, client_id: str, data: bytes) -> UploadReceipt:
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
                               key=events.update_key(job.job_id, active.number, client_id))
        fresh = await self.store.record_upload(
            job.job_id, active.number, client_id, num_examples=meta["num_examples"],
            bytes_up=len(data), metrics={})
        if not fresh:
            return await self._refuse(job, active, client_id, "duplicate",
                                      "this update was already accepted")
        active.uploaded.append(client_id)
        active.bytes_up += len(data)
        stats = active.codec_stats.setdefault(meta["codecs"] or "f32",
                                              {"updates": 0, "bytes": 0})
        stats["updates"] += 1
        stats["bytes"] += len(data)
        if update.sealed is not None:
            active.sealed_bytes += len(update.sealed)
            active.sealed_values += int(job.he.selected.size) if job.he else 0
        if len(active.uploaded) >= self._quorum(job, active):
            await self._close(job, active)
        return UploadReceipt(True)

    async def _seen_late(self, job: _Job, number: int, client_id: str, nbytes: int) -> None:
        """Local DP: a selected device's noised update that arrives too late still reached
        the server, so the privacy ledger must charge it (its participant row keeps the
        size; the status stays)."""
        if job.local_dp is not None and isinstance(number, int):
            await self.store.note_upload_seen(job.job_id, number, client_id, nbytes)

    @staticmethod
    def _norm_bound(job: _Job) -> float | None:
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

    async def _settle_if_answered(self, job: _Job, active: _ActiveRound) -> None:
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

    async def secagg(self, client_id: str, job_id: str, number: int, stage: str,
                     payload: dict[str, Any]) -> dict[str, Any]:
        """One SecAgg+ message of a device; returns, once the next stage has begun, what
        the device needs for it. Refusals raise :class:`SecAggRefused` (audited); a round
        that aborts raises :class:`SecAggAbort` to everyone still waiting."""
        job = self.jobs.get(job_id)
        active = job.round if job is not None else None
        if job is None or active is None or active.number != number or active.secagg is None:
            raise SecAggRefused("wrong_round", f"no SecAgg+ round {number} of {job_id!r} "
                                               "is open")
        stages = active.secagg
        try:
            await stages.accept(client_id, stage, payload)
        except SecAggRefused as exc:
            await self._refuse(job, active, client_id, exc.code, f"secagg: {exc}")
            raise
        if stage == "masked":  # the device's contribution: counted like an upload
            y = payload["y"]
            nbytes = int(y.size) * ((stages.config.ring.ring_bits + 7) // 8)
            # its example count and metrics are inside the masked vector: only sums exist
            await self.store.record_upload(job.job_id, active.number, client_id,
                                           num_examples=0, bytes_up=nbytes, metrics={})
            active.uploaded.append(client_id)
            active.bytes_up += nbytes
            stats = active.codec_stats.setdefault("secagg", {"updates": 0, "bytes": 0})
            stats["updates"] += 1
            stats["bytes"] += nbytes
        await stages.proceed(stage)
        return await stages.reply(client_id, stage)

    async def he_open(self, client_id: str, job_id: str, version: int, stage: str,
                      payload: dict[str, Any]) -> dict[str, Any]:
        """One step of a silo opening the current model's threshold-HE sum
        (:mod:`tsfl.pipeline.he_opening`); returns when the step is complete. Refusals
        and failures raise :class:`HeError` (refusals are audited)."""
        job = self.jobs.get(job_id)
        if job is None:
            raise HeError("unknown_job", f"no running job {job_id!r}")
        if job.he is None or not isinstance(job.he.public, JobKey):
            raise HeError("opening", f"{job_id!r} is not a threshold-HE job with a key")
        if version != job.version:
            raise HeError("stale_model", f"model v{version} of {job_id} is not the current "
                                         f"one (v{job.version})")
        if stage == "commit":  # commit before reveal: the round's board of commitments
            board = self._commit_board(job, payload.get("round"))
            try:
                return await board.submit(client_id, payload.get("commit"))
            except HeError as exc:
                await self.store.append_audit(job_id, "he.commit.refused", {
                    "round": board.round, "client_id": client_id, "code": exc.code,
                    "message": str(exc)[:512]})
                raise
        opening = job.he_opening
        if (opening is None or opening.version != version
                or (opening.failure is not None and stage == "sketch")):  # start afresh
            sealed = model_sealed(job.model_bytes)
            if sealed is None:
                raise HeError("opening", f"model v{version} has no encrypted sum")
            if opening is not None:
                opening.cancel()
            opening = job.he_opening = OpeningStages(
                job_id, version, job.he.public, job.he.size, bytes(sealed),
                job.he.authorities, job.spec.crypto.he.stage_timeout_s)
        try:
            return await opening.submit(client_id, stage, payload)
        except HeError as exc:
            await self.store.append_audit(job_id, "he.opening.refused", {
                "version": version, "client_id": client_id, "stage": stage,
                "message": str(exc)[:512]})
            raise

    def _commit_board(self, job: _Job, number: Any) -> CommitBoard:
        """The open round's board of section commitments (made on first use)."""
        active = job.round
        if (active is None or active.number != number
                or active.state is not RoundState.COLLECTING):
            raise HeError("wrong_step", f"round {number!r} of {job.job_id} takes no "
                                        "commitments now")
        if active.he_commits is None:
            assert job.he is not None
            active.he_commits = CommitBoard(
                job.job_id, active.number, job.he.key_id,
                [c for c in active.cohort if c not in active.declined], job.he.authorities,
                job.spec.crypto.he.stage_timeout_s)
        return active.he_commits

    def expect_he_commits(self, job_id: str, devices: list[str]) -> None:
        """Simulation: only ``devices`` of the open round will commit (the others
        vanished), so its commitments close once they all have."""
        job = self.jobs[job_id]
        assert job.round is not None
        self._commit_board(job, job.round.number).expect(devices)

    # -- threshold HE: the silos' key ceremony ---------------------------------------------
    def _he_status(self, job: _Job) -> dict[str, Any]:
        """What a silo polls: the key ceremony (when one runs or ran) and the model whose
        sum the silos open now (the current one, when it holds an encrypted sum)."""
        opening = None
        if (job.he is not None and isinstance(job.he.public, JobKey)
                and model_sealed(job.model_bytes) is not None):
            opening = {"version": job.version, "he": job.he.task_config()}
        return {"ceremony": job.he_ceremony.info() if job.he_ceremony else None,
                "opening": opening}

    def needs_he_ceremony(self, job_id: str) -> bool:
        job = self.jobs.get(job_id)
        return job is not None and job.he is None and needs_ceremony(job.spec)

    async def run_he_ceremony(self, job_id: str, participants: list[str]) -> str:
        """Relay the key ceremony of ``participants`` (the job's silos) and install the
        key it makes: the spec's key id (stored, audited ``he.key.created``), the job's
        public part. Returns the key id; :class:`HeError` ``aborted`` with the reason
        when the ceremony failed (a silo aborted, or a step timed out)."""
        job = self.jobs[job_id]
        if job.he is not None:
            return job.he.key_id
        assert job.he_shape is not None
        h = job.spec.crypto.he
        relay = CeremonyRelay(job_id, job.he_shape[0], participants,
                              [bytes.fromhex(a) for a in h.authority or ()], h.stage_timeout_s)
        if job.he_ceremony is not None:
            job.he_ceremony.cancel()
        job.he_ceremony = relay
        await self.store.append_audit(job_id, "he.ceremony.started", {
            "attempt": relay.attempt, "participants": relay.ids})
        try:
            public = await relay.wait()
        except HeError as exc:
            await self.store.append_audit(job_id, "he.ceremony.failed", {
                "attempt": relay.attempt, "reason": str(exc)[:1024]})
            raise
        he = h.model_copy(update={"key_id": public.key_id})
        spec = job.spec.model_copy(update={"crypto": job.spec.crypto.model_copy(
            update={"he": he})})
        await self.store.set_job_key(job_id, spec.model_dump(mode="json"), spec.sha256(), {
            "key_id": public.key_id, "attempt": relay.attempt, "participants": relay.ids,
            "threshold": public.params.threshold, "confirmations": len(relay.ids)})
        job.spec = spec
        job.he = HeJob.from_spec(spec, job.layout)
        self.log.info("threshold key %s made by %d silos", public.key_id[:16], len(relay.ids),
                      extra={"job": job_id})
        return public.key_id

    async def he_setup(self, client_id: str, job_id: str, stage: str,
                       payload: dict[str, Any]) -> dict[str, Any]:
        """One key-ceremony step of a silo (:mod:`tsfl.pipeline.he_ceremony`), ``status``
        (what to take part in now) or ``abort`` (the silo found the transcript wrong).
        Refusals raise :class:`HeError` (audited)."""
        job = self.jobs.get(job_id)
        if job is None:
            raise HeError("unknown_job", f"no running job {job_id!r}")
        if not threshold_keyed(job.spec):
            raise HeError("not_threshold", f"{job_id!r} is not a threshold-HE job")
        if stage == "status":
            return self._he_status(job)
        relay = job.he_ceremony
        if relay is None:
            raise HeError("wrong_step", f"no key ceremony runs for {job_id!r}")
        if stage == "abort":
            code = str(payload.get("code", ""))[:64]
            message = str(payload.get("message", ""))[:512]
            await self.store.append_audit(job_id, "he.ceremony.abort", {
                "attempt": relay.attempt, "client_id": client_id, "code": code,
                "message": message})
            self.log.warning("%s aborted the key ceremony of %s: %s (%s)", client_id, job_id,
                             message, code)
            relay.abort(client_id, code, message)
            return {}
        try:
            return await relay.submit(client_id, stage, payload)
        except HeError as exc:
            if exc.code != "aborted":
                await self.store.append_audit(job_id, "he.ceremony.refused", {
                    "attempt": relay.attempt, "client_id": client_id, "stage": stage,
                    "code": exc.code, "message": str(exc)[:512]})
            raise

    async def wait_opened(self, job_id: str, version: int, timeout_s: float) -> bool:
        """Whether the silos opened model ``version``'s sum (the final model's, before
        the job ends): waits, at most ``timeout_s``, until every silo holding a share (or
        every one that joined the opening) received the partial decryptions."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        opened = False
        while loop.time() < deadline:
            job = self.jobs.get(job_id)
            if job is None:
                return opened
            opening = job.he_opening
            if opening is not None and opening.version == version and opening.opened:
                opened = True
                silos = set(job.he_ceremony.ids) if job.he_ceremony else opening.joined
                if silos <= opening.delivered:
                    return True
            await asyncio.sleep(0.1)
        return opened

    async def _on_secagg_done(self, job: _Job, active: _ActiveRound,
                              outcome: SecAggOutcome) -> None:
        """The unmasked sum (or the abort): close the round and hand the release stage the
        round's mean, as the aggregator would; an aborted round releases nothing."""
        if active.state is not RoundState.COLLECTING or job.round is not active:
            return
        if outcome.total is None:
            await self._fail(job, active, outcome.reason or "secagg aborted")
            return
        cfg = active.secagg.config if active.secagg else None
        assert cfg is not None
        extras = secagg_extras(job.spec)
        size = cfg.size - extras.width
        examples, sums = extras.decode_sum(outcome.total[size:])
        if examples <= 0:
            await self._fail(job, active, "secagg: the survivors' example count sums to 0")
            return
        await self._close(job, active)
        weight = examples / job.spec.crypto.secagg.weight_unit
        total = dequantize_sum(outcome.total[:size], len(outcome.survivors), cfg.ring)
        mean = (total.astype(np.float64) / weight).astype(np.float32)
        train_loss = sums.get("train_loss")
        msg = events.aggregate_message(
            job.job_id, active.number, job.version, layout=job.layout.digest, ok=True,
            accepted=list(outcome.survivors), rejected={},
            num_examples=examples, train_loss=train_loss, mean=mean,
            weight_total=weight, weighting="examples")
        await self.bus.publish(topics.AGGREGATES, msg,
                               key=topics.round_key(job.job_id, active.number))

    async def _refuse(self, job: _Job | None, active: _ActiveRound | None, client_id: str,
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
