"""The aggregator role: ``tsfl.rounds`` + ``tsfl.updates.clipped`` + ``tsfl.verdicts``
(jobs with a robust rule) + ``tsfl.updates.direct`` (the others) → ``tsfl.aggregates``.

Stages: decode → validate → apply the verdict → fold (streaming, O(P)). An update of a
job with a robust rule is folded once both it and its verdict are here, with weight
``num_examples × verdict weight`` (``verdict weight`` alone for a central-DP job: one
vote per client); a job without one folds each update as it arrives. The round's mean
delta goes to ``tsfl.aggregates`` (a round with nothing to aggregate: ``tsfl.failures``);
the release stage (the privacy role)
noises it where the job has DP, applies the server optimizer and checkpoints the model.
The round's offsets are committed only after the aggregate is published: a restarted
aggregator re-reads the open round and re-folds it, idempotent by client, and the
release stage counts a round once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record, position_of
from tsfl.config import JobSpec
from tsfl.core.fold import EstimatorFold, RoundFold
from tsfl.core.layout import ParamLayout
from tsfl.core.update import Update
from tsfl.he import HeError, HeJob
from tsfl.he.job import CheckedSection, RoundSum
from tsfl.pipeline import events
from tsfl.pipeline.async_buffer import staleness, staleness_scale
from tsfl.pipeline.role import BusRole
from tsfl.pipeline.round_metrics import observe_aggregation
from tsfl.robust.build import coordinate_estimator
from tsfl.storage.rows import job_layout
from tsfl.storage.store import Store
from tsfl.wire.envelope import WireError
from tsfl.wire.messages import decode_update, peek_update_meta


@dataclass
class _Round:
    number: int
    fold: RoundFold
    updates: dict[str, Update] = field(default_factory=dict)  # waiting for their verdict
    verdicts: dict[str, tuple[float, str, float]] = field(default_factory=dict)
    folded: set[str] = field(default_factory=set)
    rejected: dict[str, str] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    unclipped: set[str] = field(default_factory=set)  # norm was within the clip bound
    closing: set[str] | None = None
    closing_at: float = 0.0  # when the CLOSING event arrived (monotonic)
    held: list[Record] = field(default_factory=list)  # settled once the round is published
    sealed: RoundSum | None = None  # HE jobs: the encrypted coordinates' running sum
    sections: dict[str, CheckedSection] = field(default_factory=dict)  # HE: checked, unfolded
    staleness: dict[str, int] = field(default_factory=dict)  # async: τ of each update

    def settled(self, client: str) -> bool:
        return client in self.folded or client in self.rejected


@dataclass
class _JobState:
    job_id: str
    spec: JobSpec
    layout: ParamLayout
    version: int  # of the model the open round trains on
    closed: int  # the last round this aggregator (or its predecessor) published
    round: _Round | None = None
    he: HeJob | None = None

    @property
    def screened(self) -> bool:
        """Whether the byzantine stage sends a verdict for each update: only for a job
        with a robust rule (an HE update is unreadable there; without a rule every
        update counts with weight 1, so none is waited for)."""
        return self.he is None and self.spec.robust.aggregator != "none"

    @property
    def uniform_weights(self) -> bool:
        """One vote per client (times its verdict): central DP, FLTrust, whose votes
        are its trust scores, and FedBuff's ``averaging: uniform``."""
        return (self.spec.privacy.mode == "central" or self.spec.robust.aggregator == "fltrust"
                or (self.spec.strategy.mode == "async"
                    and self.spec.strategy.fedbuff.averaging == "uniform"))


class Aggregator(BusRole):
    name = "aggregator"
    #: the update topics this role folds (the he role folds the encrypted ones)
    update_topics: tuple[str, ...] = (topics.UPDATES_CLIPPED, topics.UPDATES_DIRECT,
                                      topics.VERDICTS)
    #: the crypto mode of the jobs this role aggregates: HE jobs go to the he role, and
    #: secagg jobs are summed by the coordinator's SecAgg+ stages (the sum is all it gets)
    serves_mode = "none"

    def __init__(self, bus: Bus, store: Store, *, group_id: str | None = None,
                 max_update_bytes: int = 2 * 1024**3):
        super().__init__(bus, store, [topics.ROUNDS, *self.update_topics],
                         group_id or self.name)
        self.max_update_bytes = max_update_bytes
        self.jobs: dict[str, _JobState] = {}
        self._elsewhere: set[str] = set()  # jobs another role aggregates

    async def handle(self, record: Record) -> None:
        if record.topic == topics.ROUNDS:
            await self._on_round_event(record)
        elif record.topic == topics.VERDICTS:
            await self._on_verdict(record)
        else:
            await self._on_update(record)

    # -- control ---------------------------------------------------------------------------
    async def _on_round_event(self, record: Record) -> None:
        event = events.parse_round_event(record.value)
        job_id, kind = event["job"], event["type"]
        if kind == events.JOB_FINISHED:
            self.jobs.pop(job_id, None)
            self._elsewhere.discard(job_id)
        elif kind == events.JOB_STARTED:
            await self._job(job_id)
        elif kind == events.CLOSING:
            state = await self._job(job_id)
            if state is not None and event["round"] > state.closed:
                rnd = await self._round(state, event["round"])
                if rnd is not None:
                    rnd.closing = set(event.get("uploaded", []))
                    rnd.closing_at = time.monotonic()
                    rnd.held.append(position_of(record))
                    await self._maybe_finalize(state)
                    return
        self.settle(record)

    async def _job(self, job_id: str) -> _JobState | None:
        """The job's state, or None for an unknown job or one another role aggregates."""
        if job_id in self._elsewhere:
            return None
        state = self.jobs.get(job_id)
        if state is None:
            try:
                state = await self._load_job(job_id)
            except (LookupError, HeError) as exc:
                if job_id in self._elsewhere or getattr(exc, "code", None) == "pending":
                    self.log.debug("%s", exc)  # another role's job, or a key still to come
                else:
                    self.log.warning("%s", exc)
                return None
        return state

    async def _load_job(self, job_id: str) -> _JobState:
        row = await self.store.get_job(job_id)
        if row is None:
            raise LookupError(f"job {job_id!r} is not in the store")
        spec = JobSpec.model_validate(row["spec"])
        layout = job_layout(row)
        meta = await self.store.latest_checkpoint_meta(job_id)
        if meta is None:
            raise LookupError(f"job {job_id!r} has no initial checkpoint")
        if spec.crypto.mode != self.serves_mode:
            self._elsewhere.add(job_id)
            raise LookupError(f"job {job_id!r} (crypto.mode {spec.crypto.mode}) is not "
                              f"aggregated by the {self.name} role")
        rounds = await self.store.list_rounds(job_id)
        # A round past CLOSING has been aggregated: its CLOSING must not fold again.
        closed = max([r["number"] for r in rounds
                      if r["state"] in ("AGGREGATED", "PUBLISHED", "FAILED")] + [meta[1]])
        state = _JobState(job_id, spec, layout, meta[0], closed,
                          he=HeJob.from_spec(spec, layout))
        self.jobs[job_id] = state
        return state

    async def _round(self, state: _JobState, number: int) -> _Round | None:
        """The open round ``number`` (created on first sight), or None for a round already
        aggregated (a replay)."""
        if number <= state.closed or (state.round and number < state.round.number):
            return None
        if state.round is None or state.round.number != number:
            # The model this round trains on: the newest released one. The release stage
            # checkpoints it before publishing it, so it is in the store by now.
            meta = await self.store.latest_checkpoint_meta(state.job_id)
            if meta is not None:
                state.version = meta[0]
            state.round = _Round(number, self._new_fold(state))
            if state.he is not None:
                state.round.sealed = state.he.new_sum()
        return state.round

    @staticmethod
    def _new_fold(state: _JobState) -> RoundFold:
        """A streaming weighted mean, or for a coordinate-wise robust rule (median,
        trimmed mean, Bulyan) its estimator over the kept updates at close."""
        estimate = coordinate_estimator(state.spec.robust)
        if estimate is not None:
            return EstimatorFold(state.layout.total_size, estimate)
        return RoundFold(state.layout.total_size)

    # -- inputs ----------------------------------------------------------------------------
    async def _on_verdict(self, record: Record) -> None:
        try:
            v = events.parse_verdict(record.value)
        except (WireError, ValueError) as exc:
            self.log.warning("unreadable verdict at offset %d: %s", record.offset, exc)
            self.settle(record)
            return
        state = await self._job(v["job"])
        rnd = await self._round(state, v["round"]) if state else None
        if state is None or rnd is None:
            self.settle(record)
            return
        rnd.held.append(position_of(record))
        rnd.verdicts.setdefault(v["client"], (v["weight"], v["reason"], v["scale"]))
        await self._try_fold(state, rnd, v["client"])

    async def _on_update(self, record: Record) -> None:
        try:
            meta = peek_update_meta(record.value, self.max_update_bytes)
        except WireError as exc:
            self.log.warning("unreadable update at %s@%d: %s", record.topic, record.offset, exc)
            self.settle(record)
            return
        state = await self._job(meta["job_id"])
        rnd = await self._round(state, meta["round"]) if state else None
        if state is None or rnd is None:
            self.settle(record)
            return
        rnd.held.append(position_of(record))
        client = meta["client_id"]
        if client in rnd.updates or rnd.settled(client):
            return  # duplicate delivery: counted once already
        try:
            # The coordinator verified the checksum at the edge (the bus hop is covered by
            # Kafka's record CRC32C), and RoundFold checks finiteness as it folds, so decoding
            # reads nothing but the header.
            update = decode_update(record.value, state.layout, max_bytes=self.max_update_bytes,
                                   verify_checksum=False, allow_nonfinite=True,
                                   he_clear=state.he.clear if state.he else None)
            try:
                rnd.staleness[client] = staleness(state.spec, update.model_version,
                                                  state.version)
            except ValueError as exc:
                raise WireError("stale", str(exc)) from None
        except WireError as exc:
            await self._reject(state, rnd, client, f"{exc.code}: {exc}")
            await self._maybe_finalize(state)
            return
        if not await self._admit(state, rnd, update):
            return  # not the client's update (a forgery): the client's own may still come
        rnd.updates[client] = update
        if not state.screened:
            rnd.verdicts.setdefault(client, (1.0, "", 1.0))
        await self._try_fold(state, rnd, client)

    async def _admit(self, state: _JobState, rnd: _Round, update: Update) -> bool:
        """Whether ``update`` is its client's to fold (the he role checks signatures)."""
        return True

    async def _try_fold(self, state: _JobState, rnd: _Round, client: str) -> None:
        if client not in rnd.updates or client not in rnd.verdicts:
            return
        update = rnd.updates.pop(client)
        weight, reason, scale = rnd.verdicts[client]
        if weight <= 0.0:
            await self._reject(state, rnd, client, f"byzantine: {reason}")
        elif not self._fold_sealed(state, rnd, update):
            await self._reject(state, rnd, client, "he: unreadable encrypted section")
        else:
            tau = rnd.staleness.get(client, 0)
            if tau:  # FedBuff: s(τ) scales the delta, not the mean's denominator
                scale *= staleness_scale(state.spec, tau)
            delta = update.delta if scale == 1.0 else update.delta * np.float32(scale)
            rnd.fold.add(client, delta,
                         weight if state.uniform_weights else update.num_examples * weight)
            rnd.folded.add(client)
            if update.metrics.get("dp_unclipped"):
                rnd.unclipped.add(client)
            rnd.weights[client] = update.num_examples
            if "train_loss" in update.metrics:
                rnd.losses[client] = update.metrics["train_loss"]
        await self._maybe_finalize(state)

    def _fold_sealed(self, state: _JobState, rnd: _Round, update: Update) -> bool:
        """Add an HE update's encrypted section to the round's sum (True when there is
        none to add); the coordinator checked it at the edge, so False is a corruption."""
        if state.he is None:
            return True
        assert rnd.sealed is not None and update.sealed is not None
        try:
            section = rnd.sections.pop(update.client_id, None) or state.he.check_section(
                update.sealed, state.job_id, rnd.number, update.client_id)
            rnd.sealed.add(section)
        except HeError as exc:
            self.log.warning("%s round %d: %s's encrypted section: %s", state.job_id,
                             rnd.number, update.client_id, exc)
            return False
        return True

    async def _reject(self, state: _JobState, rnd: _Round, client: str, reason: str) -> None:
        rnd.rejected[client] = reason
        await self.store.append_audit(state.job_id, "update.rejected", {
            "round": rnd.number, "client_id": client, "reason": reason}, actor="aggregator")

    # -- close -----------------------------------------------------------------------------
    async def _maybe_finalize(self, state: _JobState) -> None:
        rnd = state.round
        if rnd is None or rnd.closing is None:
            return
        if not all(rnd.settled(c) for c in rnd.closing):
            return  # some announced updates or verdicts are still on their way
        result = rnd.fold.close()
        for client, reason in result.rejected.items():
            await self._reject(state, rnd, str(client), reason)
        accepted = [str(c) for c in result.accepted]
        examples = sum(rnd.weights[c] for c in accepted)
        with_loss = [c for c in accepted if c in rnd.losses]
        train_loss = (sum(rnd.losses[c] * rnd.weights[c] for c in with_loss)
                      / sum(rnd.weights[c] for c in with_loss)) if with_loss else None
        key = topics.round_key(state.job_id, rnd.number)
        if result.mean is not None:
            msg = events.aggregate_message(
                state.job_id, rnd.number, state.version, layout=state.layout.digest, ok=True,
                accepted=accepted, rejected=dict(rnd.rejected), num_examples=examples,
                train_loss=train_loss, mean=result.mean, weight_total=result.total_weight,
                weighting="uniform" if state.uniform_weights else "examples",
                unclipped=sum(1 for c in accepted if c in rnd.unclipped),
                sealed=(rnd.sealed.result(state.job_id, rnd.number)
                        if state.he is not None and rnd.sealed is not None else None))
        else:
            msg = events.aggregate_message(
                state.job_id, rnd.number, state.version, layout=state.layout.digest, ok=False,
                accepted=[], rejected=dict(rnd.rejected), num_examples=0, train_loss=None,
                reason=result.error or "no valid update to aggregate")
        # A failure is small and only the coordinator needs it: it travels on its own topic,
        # so the coordinator never reads the (model-sized) aggregates.
        if state.spec.strategy.mode == "async":  # which model each update trained on
            await self.store.append_audit(state.job_id, "fedbuff.folded", {
                "round": rnd.number, "model_version": state.version,
                "staleness": sorted(rnd.staleness.get(c, 0) for c in accepted)},
                actor="aggregator")
        await self.bus.publish(topics.AGGREGATES if result.mean is not None
                               else topics.FAILURES, msg, key=key)
        observe_aggregation(state.job_id, time.monotonic() - rnd.closing_at)
        self.settle(*rnd.held)
        state.closed = rnd.number
        state.round = None


__all__ = ["Aggregator"]
