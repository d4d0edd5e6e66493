"""The coordinator's part in cryptographic rounds: routing SecAgg+ stages and turning
their outcome into a round result, relaying threshold-HE key ceremonies and openings."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from tsfl.bus import topics
from tsfl.he import HeError, HeJob
from tsfl.he.job import needs_ceremony, threshold_keyed
from tsfl.he.threshold.keys import JobKey
from tsfl.pipeline import events
from tsfl.pipeline.coordinator_base import CoordinatorBase
from tsfl.pipeline.he_ceremony import CeremonyRelay
from tsfl.pipeline.he_commit import CommitBoard
from tsfl.pipeline.he_opening import OpeningStages
from tsfl.pipeline.job_state import ActiveRound, JobState
from tsfl.pipeline.secagg_stages import SecAggOutcome, SecAggRefused
from tsfl.pipeline.task_config import secagg_extras
from tsfl.secagg.ring import dequantize_sum
from tsfl.storage.store import RoundState
from tsfl.wire.messages import (
    model_sealed,
)


class CryptoDesk(CoordinatorBase):
    """A part of :class:`~tsfl.pipeline.coordinator.Coordinator` (see the module)."""

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
            commit = payload.get("commit")
            if not isinstance(commit, dict):
                raise HeError("malformed", "a commit step carries a commitment (a map)")
            try:
                return await board.submit(client_id, commit)
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

    def _commit_board(self, job: JobState, number: Any) -> CommitBoard:
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
    def _he_status(self, job: JobState) -> dict[str, Any]:
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

    async def _on_secagg_done(self, job: JobState, active: ActiveRound,
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
