"""The privacy role: ``tsfl.updates.raw`` → ``tsfl.updates.clipped`` (or
``tsfl.updates.direct`` for a job without a robust rule) and ``tsfl.aggregates`` →
``tsfl.models``; the release stage of every round.

- Raw updates of a central-DP job are clipped (in the mechanism's norm, with the round's
  clip norm) and re-encoded with their pre-clip norm in the metrics. The coordinator sends
  other jobs' updates past this stage itself; one that arrives here anyway (published by
  an older coordinator) passes through unchanged.
- An aggregate (the round's mean delta) is released: for a DP job the ledger is charged
  first — a round whose charge would exceed the budget is withheld and reported as
  ``BUDGET_EXHAUSTED`` — then central noise is added to the clipped sum, the server
  optimizer steps, and the model, the strategy state, the ledger row and the audit
  events are stored in one transaction before the model is published.

A round is released once: a redelivered aggregate of a released round re-publishes the
stored model (no second draw of noise, no second charge). The aggregator replicas'
partial aggregates are merged first (:mod:`tsfl.pipeline.partial_release`): held until
they cover the round, then released as one aggregate.

What is released names nobody: the ``tsfl.models`` frame carries the model, its round and
ε — never the cohort, example counts or losses, which would reveal who took part and void
the amplification by sampling the ledger credits. The round's outcome is stored with the
checkpoint for operators (:meth:`Store.checkpoint_outcome`). Each ledger row states the
neighbouring relation, whether amplification was credited and the population the cohort
was drawn from (the registered devices, not ``clients.count``). Local DP is charged for
every device that uploaded, released or not: the server saw those noised updates.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record
from tsfl.config import JobSpec
from tsfl.core.layout import ParamLayout
from tsfl.he import HeJob
from tsfl.pipeline import events
from tsfl.pipeline.partial_release import PartialRelease
from tsfl.pipeline.partials import is_partial
from tsfl.pipeline.role import BusRole
from tsfl.pipeline.strategy_build import observe_loss, strategy_from_spec
from tsfl.privacy.accounting import Epsilons, PrivacyAccountant, RoundEvent
from tsfl.privacy.clipping import AdaptiveClipper, clip
from tsfl.privacy.noise import NoiseSource, noise_source
from tsfl.privacy.plan import BUDGET_EXHAUSTED, DpPlan, build_plan
from tsfl.storage.rows import CheckpointRow, JobRow, job_layout
from tsfl.storage.store import Store
from tsfl.strategies import Strategy
from tsfl.wire.codecs import encode_f32
from tsfl.wire.envelope import Frame, WireError, pack_frame
from tsfl.wire.messages import append_sealed, decode_update, encode_update, peek_update_meta

#: stream id mixed into the job seed for the central noise of a round
NOISE_STREAM = 0xD1FF


@dataclass
class _Release:
    job_id: str
    spec: JobSpec
    layout: ParamLayout
    strategy: Strategy
    version: int
    vector: np.ndarray
    released: int  # the round of the newest checkpoint
    plan: DpPlan | None
    accountant: PrivacyAccountant | None
    clipper: AdaptiveClipper | None
    epsilon: float = 0.0
    participation: collections.Counter[str] = field(default_factory=collections.Counter)
    exhausted: str | None = None  # the withheld round's reason, once the budget is spent
    prefetch: asyncio.Future[None] | None = None
    he: HeJob | None = None  # HE jobs: which coordinates only exist encrypted
    sealed: bytes | None = None  # HE jobs: the released model's encrypted sum

    @property
    def clip_norm(self) -> float | None:
        """This round's clip norm: the adaptive clipper's, else the plan's fixed one."""
        if self.clipper is not None:
            return self.clipper.clip_norm
        return self.plan.clip_norm if self.plan is not None else None


class Privacy(BusRole, PartialRelease):
    name = "privacy"

    def __init__(self, bus: Bus, store: Store, *, group_id: str = "privacy",
                 max_update_bytes: int = 2 * 1024**3):
        super().__init__(bus, store, [topics.UPDATES_RAW, topics.AGGREGATES, topics.ROUNDS],
                         group_id)
        self.max_update_bytes = max_update_bytes
        self.jobs: dict[str, _Release] = {}

    async def handle(self, record: Record) -> None:
        if record.topic == topics.UPDATES_RAW:
            await self._on_update(record)
        elif record.topic == topics.AGGREGATES:
            head, payload = events.parse_aggregate(record.value)
            if is_partial(head):  # an aggregator replica's share (partial_release)
                await self._on_partial(record, head, payload)
            else:
                await self._on_aggregate(head, payload)
                self.settle(record)
        else:
            event = events.parse_round_event(record.value)
            if event["type"] == events.JOB_FINISHED:
                self.jobs.pop(event["job"], None)
                self._drop_partials(event["job"])
            elif event["type"] == events.ROUND_FAILED:
                self._drop_partials(event["job"], event["round"])
                await self._on_failed_round(event["job"], event["round"])
            self.settle(record)

    # -- jobs ------------------------------------------------------------------------------
    async def _job(self, job_id: str) -> _Release | None:
        state = self.jobs.get(job_id)
        if state is None:
            row = await self.store.get_job(job_id)
            ckpt = await self.store.latest_checkpoint(job_id) if row else None
            if row is None or ckpt is None:
                self.log.warning("job %r is not in the store", job_id)
                return None
            state = await self._load(job_id, row, ckpt)
            self.jobs[job_id] = state
        return state

    async def _load(self, job_id: str, row: JobRow, ckpt: CheckpointRow) -> _Release:
        spec = JobSpec.model_validate(row["spec"])
        layout = job_layout(row)
        strategy = strategy_from_spec(spec)
        strategy.load_state(ckpt["strategy_state"] or {})
        plan = build_plan(spec, layout.total_size)
        state = _Release(job_id, spec, layout, strategy, ckpt["version"], ckpt["vector"],
                         ckpt["round"], plan, None, None, he=HeJob.from_spec(spec, layout),
                         sealed=ckpt.get("sealed"))
        if plan is None:
            return state
        # Resume the accounting from the ledger (what was charged is what was released).
        ledger = [r for r in await self.store.privacy_ledger(job_id)
                  if r["round"] <= state.released or (r["details"] or {}).get("withheld")]
        state.accountant = plan.accountant()
        state.clipper = plan.new_clipper()
        if ledger:
            state.epsilon = float(ledger[-1]["epsilon"])
            details = ledger[-1]["details"] or {}
            if state.clipper is not None and "next_clip_norm" in details:
                state.clipper.clip_norm = float(details["next_clip_norm"])
        if plan.mode == "central":
            for entry in ledger:
                state.accountant.compose(_charged_event(plan, entry))
        else:  # what the server saw, from the store (every upload, released or not)
            state.participation = collections.Counter(
                await self.store.uploads_seen(job_id, state.released))
        return state

    # -- clipping --------------------------------------------------------------------------
    async def _on_update(self, record: Record) -> None:
        out, topic = record.value, topics.UPDATES_CLIPPED
        try:
            meta = peek_update_meta(record.value, self.max_update_bytes)
            state = await self._job(meta["job_id"])
            if state is not None:
                topic = topics.screened_topic(state.spec.robust.aggregator)
                if state.plan is not None and state.plan.mode == "central":
                    out = self._clip(state, record.value)
        except WireError:
            pass  # unreadable here is unreadable downstream: the aggregator rejects it
        published = await self.bus.publish_nowait(topic, out, key=record.key,
                                                   headers=record.headers)
        self.settle_when_published(record, published)

    def _clip(self, state: _Release, data: Frame) -> bytes:
        assert state.plan is not None and state.clip_norm is not None
        update = decode_update(data, state.layout, max_bytes=self.max_update_bytes,
                               verify_checksum=False, allow_nonfinite=True)
        update.delta = update.delta.copy()
        norm = clip(update.delta, state.clip_norm, state.plan.norm)
        update.metrics = {**update.metrics, "dp_norm": norm,
                          "dp_unclipped": float(norm <= state.clip_norm)}
        return encode_update(update, state.layout)

    # -- release ---------------------------------------------------------------------------
    async def _on_aggregate(self, head: dict[str, Any], payload: memoryview) -> None:
        if not head["ok"]:
            return  # a failed round from an older producer (failures have their topic)
        state = await self._job(head["job"])
        if state is None:
            return
        number = head["round"]
        if number <= state.released:
            if number == state.released:  # redelivered: publish the stored release again
                await self._publish(state, head, number, state.epsilon)
            return
        if state.exhausted is not None:
            await self._withhold(state, head, state.exhausted, audit=False)
            return
        if head["version"] != state.version:
            self.log.warning("aggregate of round %d of %s is over v%d, the model is v%d; "
                             "ignoring it", number, state.job_id, head["version"],
                             state.version)
            return
        mean_bytes, sealed = events.aggregate_parts(head, payload)
        if (sealed is None) != (state.he is None):
            self.log.warning("aggregate of round %d of %s %s an encrypted sum; ignoring it",
                             number, state.job_id, "lacks" if sealed is None else "has")
            return
        mean = np.frombuffer(mean_bytes, dtype="<f4").copy()
        if mean.shape[0] != state.layout.total_size:
            self.log.warning("aggregate of round %d of %s has %d values, the layout %d",
                             number, state.job_id, mean.shape[0], state.layout.total_size)
            return
        ledger: dict[str, Any] | None = None
        audits: list[tuple[str, str, dict[str, Any]]] = []
        epsilon = 0.0
        plan = state.plan
        if plan is not None:
            if state.prefetch is not None:  # computed while the round trained
                await asyncio.shield(state.prefetch)
            event, population = plan.event, None
            if plan.mode == "central":
                row = await self.store.get_round(state.job_id, number)
                population = row["population"] if row is not None else None
                event = plan.event_for_population(population)
            if plan.mode == "local":  # every update the server saw so far, failed rounds too
                state.participation = collections.Counter(
                    await self.store.uploads_seen(state.job_id, number))
            eps = await asyncio.to_thread(self._epsilon_after, state, plan, event)
            if plan.target_epsilon is not None and eps.epsilon > plan.target_epsilon:
                reason = (f"{BUDGET_EXHAUSTED}: releasing round {number} would spend "
                          f"ε={eps.epsilon:.4g} > target {plan.target_epsilon:g} "
                          f"(δ={plan.delta:g}); spent ε={state.epsilon:.4g}")
                state.exhausted = reason
                if plan.mode == "local":  # the server saw those noised updates all the same
                    await self._charge_local(state, plan, number, eps)
                await self._withhold(state, head, reason, audit=True)
                return
            clip_norm = state.clip_norm
            if plan.mode == "central":
                mean = self._noise(state, plan, head, mean)
            epsilon = eps.epsilon
            ledger = _ledger_row(plan, event, eps, clip_norm, state.clip_norm,
                                 len(head["accepted"]), population)
            audits.append(("privacy.charged", "privacy", {
                "round": number, "epsilon": epsilon, "delta": plan.delta,
                "mechanism": plan.mechanism, "noise_multiplier": plan.noise_multiplier,
                "clip_norm": clip_norm}))
        observe_loss(state.strategy, head.get("train_loss"))  # a loss-trend lr schedule
        new_vector = state.strategy.aggregate_fit(state.vector, mean)
        sealed_bytes = bytes(sealed) if sealed is not None else None
        if state.he is not None:  # those coordinates exist only in the encrypted sum
            new_vector[state.he.selected] = 0.0
        version = state.version + 1
        outcome = {key: head.get(key) for key in ("accepted", "rejected", "num_examples",
                                                  "train_loss")}
        await self.store.release_model(state.job_id, version, number, state.layout.digest,
                                       new_vector, state.strategy.state(), ledger=ledger,
                                       audits=audits, sealed=sealed_bytes, outcome=outcome)
        state.vector, state.version, state.released = new_vector, version, number
        state.sealed = sealed_bytes
        if plan is not None:
            state.epsilon = epsilon
            if plan.mode == "central":
                assert state.accountant is not None
                state.accountant.compose(event)
            state.prefetch = asyncio.ensure_future(asyncio.to_thread(self._prefetch, state, plan))
        await self._publish(state, head, number, epsilon if plan else None)

    @staticmethod
    def _prefetch(state: _Release, plan: DpPlan) -> None:
        """Warm the accountant's cache with the next round's ε, which depends only on what
        is released so far (central), or on whether the most-participating device takes
        part again (local): the budget check at release is then a lookup."""
        assert state.accountant is not None
        if plan.mode == "central":
            state.accountant.epsilon_after(plan.event, 1)
        else:
            worst = max(state.participation.values(), default=0)
            for m in (worst, worst + 1):
                plan.accountant().epsilon_after(plan.event, m)

    def _epsilon_after(self, state: _Release, plan: DpPlan, event: RoundEvent) -> Epsilons:
        """ε once this round is released: the cohort's event composed once more (central),
        or the uploads the server has seen of the device it saw most (local, no
        amplification; ``state.participation`` counts them, this round's included)."""
        assert state.accountant is not None
        if plan.mode == "central":
            return state.accountant.epsilon_after(event, 1)
        worst = max(state.participation.values(), default=0)
        return plan.accountant().epsilon_after(plan.event, worst)

    async def _charge_local(self, state: _Release, plan: DpPlan, number: int,
                            eps: Epsilons) -> None:
        """A local-DP round that releases nothing still cost its uploaders their noised
        updates: charged, marked ``withheld`` (idempotent by round)."""
        row = _ledger_row(plan, plan.event, eps, state.clip_norm, state.clip_norm, 0, None)
        row["details"]["withheld"] = True
        await self.store.charge_ledger(state.job_id, number, row, [(
            "privacy.charged", "privacy", {"round": number, "epsilon": eps.epsilon,
                                           "delta": plan.delta, "withheld": True})])
        state.epsilon = max(state.epsilon, eps.epsilon)

    async def _on_failed_round(self, job_id: str, number: int) -> None:
        """A failed round of a local-DP job: whatever its devices uploaded reached the
        server, so the ledger charges it now rather than at the next release."""
        state = self.jobs.get(job_id)
        if state is None:
            row = await self.store.get_job(job_id)
            if row is None or (row["spec"].get("privacy") or {}).get("mode") != "local":
                return  # only local DP charges what devices send
            state = await self._job(job_id)
        if state is None or state.plan is None or state.plan.mode != "local":
            return
        plan = state.plan
        state.participation = collections.Counter(
            await self.store.uploads_seen(state.job_id, number))
        eps = await asyncio.to_thread(self._epsilon_after, state, plan, plan.event)
        if eps.epsilon > state.epsilon:
            await self._charge_local(state, plan, number, eps)

    def _noise_source(self, state: _Release, number: int) -> NoiseSource:
        assert state.plan is not None
        return noise_source(state.plan.noise, [state.spec.seed, number, NOISE_STREAM])

    def _noise(self, state: _Release, plan: DpPlan, head: dict[str, Any],
               mean: np.ndarray) -> np.ndarray:
        """(Σ clipped + noise) / expected cohort (McMahan et al. 2018, Alg. 1); adapts C."""
        assert state.clip_norm is not None
        source = self._noise_source(state, head["round"])
        total = mean * np.float32(head.get("weight_total") or 0.0)
        noised = plan.mechanism_for(state.clip_norm).add_noise(total, source)
        noised /= np.float32(plan.expected_clients)
        if state.clipper is not None:
            state.clipper.update(int(head.get("unclipped") or 0), len(head["accepted"]),
                                 plan.expected_clients, source)
        return noised

    async def _withhold(self, state: _Release, head: dict[str, Any], reason: str, *,
                        audit: bool) -> None:
        if audit:
            await self.store.append_audit(state.job_id, "privacy.budget_exhausted", {
                "round": head["round"], "reason": reason, "epsilon_spent": state.epsilon},
                actor="privacy")
        self.log.info("%s: %s", state.job_id, reason)
        msg = events.aggregate_message(
            state.job_id, head["round"], state.version, layout=state.layout.digest, ok=False,
            accepted=[], rejected={}, num_examples=0, train_loss=None, reason=reason)
        await self.bus.publish(topics.FAILURES, msg,
                               key=topics.round_key(state.job_id, head["round"]))

    async def _publish(self, state: _Release, head: dict[str, Any], number: int,
                       epsilon: float | None) -> None:
        msg = release_model(state.job_id, state.version, state.layout.digest, state.vector,
                            head, number, epsilon, state.sealed)
        await self.bus.publish(topics.MODELS, msg, key=state.job_id.encode())


def _charged_event(plan: DpPlan, row: dict[str, Any]) -> RoundEvent:
    """The event a ledger row charged (its population, where the row records one)."""
    population = ((row.get("details") or {}).get("population"))
    return plan.event_for_population(population if isinstance(population, int) else None)


def _ledger_row(plan: DpPlan, event: RoundEvent, eps: Epsilons, clip_norm: float | None,
                next_clip_norm: float | None, clients: int,
                population: int | None) -> dict[str, Any]:
    """A privacy-ledger row: what was charged, and under which assumptions."""
    return {"epsilon": eps.epsilon, "delta": plan.delta, "mechanism": plan.mechanism,
            "noise_multiplier": plan.noise_multiplier,
            "sampling_rate": event.sampling_rate, "clip_norm": clip_norm,
            "accountant": eps.accountant,
            "details": {"pld": eps.pld, "rdp": eps.rdp, "amplified": eps.amplified,
                        "mode": plan.mode, "sampling": event.sampling,
                        "neighboring": ("replace_one" if event.sampling == "fixed"
                                        else "add_remove"),
                        "unit": "client", "population": population,
                        "next_clip_norm": next_clip_norm, "clients": clients}}


def release_model(job_id: str, version: int, layout_digest: str, vector: np.ndarray,
                  head: dict[str, Any], number: int, epsilon: float | None,
                  sealed: bytes | None = None) -> bytes:
    """The ``tsfl.models`` frame: the released model, its round and ε — nothing about who
    took part (``head`` is the aggregate's; the outcome stays in the store); an HE job's
    encrypted sum follows the vector."""
    header: dict[str, Any] = {
        "job": job_id, "version": version, "layout": layout_digest, "codecs": ["f32"],
        "extra": {"round": number, "epsilon": epsilon},
    }
    return pack_frame("model", header, append_sealed(header, encode_f32(vector), sealed))
