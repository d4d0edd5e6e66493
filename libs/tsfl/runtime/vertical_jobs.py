"""Vertical jobs in the distributed deployment: the coordinator relays, the parties train.

A ``vertical:`` job submitted to a coordinator has no rounds of its own to drive: its
parties (``tsfl.sdk.vertical.run_party`` processes) enrol with the job's enrolment token
like devices, then run the PSI and split training among themselves through the
coordinator's relay (:mod:`tsfl.rpc.party_relay`, served by
:mod:`tsfl.rpc.vertical_service`). The coordinator keeps the job's record:

- RUNNING from submission; the parties must all enrol within the manager's
  ``registration_timeout_s`` (else FAILED, naming who is missing);
- each party reports its PSI sizes (audited ``vertical.psi``); the label party reports
  each epoch's metrics (a round row per epoch, PUBLISHED with its metrics, and an audit
  ``vertical.epoch``) and the end (COMPLETED once every epoch is in);
- FAILED when a party reports it gave up, or nothing moved (no message relayed, no
  report) for ``round.deadline_s``; CANCELLED by ``CancelJob``;
- at the end the relay's view (messages and bytes per kind) is audited
  (``vertical.relayed``) and what it held is dropped.

The relay lives in memory: a coordinator restart fails a running vertical job (its
parties resubmit), a broker outage does not touch it (it uses no topic).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tsfl.config import JobSpec
from tsfl.pipeline.credentials import enrollment_digest, session_hash
from tsfl.rpc.party_relay import PartyRelay, ReportRefused
from tsfl.runtime.admission import admit_vertical
from tsfl.storage.states import RoundState

if TYPE_CHECKING:
    from tsfl.runtime.jobs import JobManager, Submitted

log = logging.getLogger("tsfl.jobs.vertical")

#: the metrics an epoch report may carry (numbers only)
EPOCH_METRICS = ("test_accuracy", "test_loss", "train_loss", "bytes_up", "bytes_down",
                 "clients", "wall_s", "epsilon")
MAX_REASON = 512
RESTARTED = ("the coordinator restarted: a vertical job's relay holds its parties' "
             "messages in memory only; submit it again")


@dataclass
class VerticalRun:
    """A running vertical job's state on this coordinator."""

    job_id: str
    spec: JobSpec
    num_classes: int
    psi: dict[str, dict[str, int]] = field(default_factory=dict)
    epochs: int = 0
    ended: asyncio.Future[tuple[str, str | None]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    reported_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def parties(self) -> list[str]:
        assert self.spec.vertical is not None
        return [p.name for p in self.spec.vertical.parties]

    @property
    def features(self) -> list[str]:
        assert self.spec.vertical is not None
        return [p.name for p in self.spec.vertical.parties if p.indices]


def is_vertical(row: Mapping[str, object]) -> bool:
    """Whether a stored job row is a vertical job."""
    spec = row.get("spec")
    return isinstance(spec, dict) and spec.get("vertical") is not None


def _int(body: dict[str, Any], key: str, hi: int) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise ReportRefused(f"{key}: an integer in 0..{hi}")
    return value


class VerticalJobs:
    """The vertical jobs of one coordinator (owned by its :class:`JobManager`)."""

    def __init__(self, manager: JobManager):
        self.manager = manager
        self.store = manager.store
        self.relay = PartyRelay()
        self.runs: dict[str, VerticalRun] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    # -- submission ------------------------------------------------------------------------
    async def submit(self, spec: JobSpec, enrollment_token: str, owner: str | None
                     ) -> Submitted:
        """Admit (:func:`tsfl.runtime.admission.admit_vertical`), store and open a vertical
        job; raises :class:`tsfl.config.ConfigError` for a spec it refuses."""
        from tsfl.runtime.jobs import Submitted

        spec, classes = await asyncio.to_thread(admit_vertical, spec, self.manager.policy)
        v = spec.vertical
        assert v is not None
        job_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        token = enrollment_token or secrets.token_hex(24)
        digest = await asyncio.to_thread(enrollment_digest, job_id, token)
        await self.store.create_job(job_id, spec.name, spec.model_dump(mode="json"),
                                    spec.sha256(), [], digest, owner)
        await self.store.append_audit(job_id, "vertical.started", {
            "label_party": v.label_party, "parties": [p.name for p in v.parties],
            "model": v.model, "epochs": spec.rounds, "classes": classes})
        run = VerticalRun(job_id, spec, classes)
        self.runs[job_id] = run
        self.relay.open(job_id, run.parties)
        self.tasks[job_id] = asyncio.create_task(self._run(run), name=f"tsfl-vjob-{job_id}")
        return Submitted(job_id, spec, token)

    # -- parties ---------------------------------------------------------------------------
    async def enrol(self, job_id: str, party: str, session: str) -> bool:
        """Record ``party``'s session token (the caller checked the enrolment token);
        True for a first enrolment."""
        new = await self.store.register_device(job_id, party, session_hash(session), {})
        await self.store.append_audit(job_id, "vertical.party.enrolled", {
            "party": party, "reconnected": not new})
        return new

    async def report(self, job_id: str, party: str, kind: str, body: dict[str, Any]) -> None:
        """Take a party's report: ``psi`` (any party: its set size and intersection
        size), ``epoch`` (the label party: the epoch's metrics), ``end`` (the label party:
        COMPLETED; any party: FAILED with a reason). Raises :class:`ReportRefused`."""
        run = self.runs.get(job_id)
        if run is None or run.ended.done():
            raise ReportRefused(f"job {job_id!r} is not a running vertical job")
        v = run.spec.vertical
        assert v is not None
        async with run.lock:
            run.reported_at = asyncio.get_running_loop().time()
            if kind == "psi":
                await self._psi(run, party, body)
            elif kind == "epoch":
                if party != v.label_party:
                    raise ReportRefused("only the label party reports epochs")
                await self._epoch(run, body)
            elif kind == "end":
                self._end(run, party, body)
            else:
                raise ReportRefused("a report is psi, epoch or end")

    async def _psi(self, run: VerticalRun, party: str, body: dict[str, Any]) -> None:
        assert run.spec.vertical is not None
        if party in run.psi:
            raise ReportRefused("this party reported its PSI already")
        size = _int(body, "set_size", run.spec.vertical.psi.max_items)
        sizes = {"set_size": size, "intersection": _int(body, "intersection", size)}
        run.psi[party] = sizes
        await self.store.append_audit(run.job_id, "vertical.psi", {"party": party, **sizes})

    async def _epoch(self, run: VerticalRun, body: dict[str, Any]) -> None:
        number = _int(body, "round", run.spec.rounds)
        if number != run.epochs + 1:
            raise ReportRefused(f"epoch {number} reported, {run.epochs + 1} expected")
        metrics: dict[str, float | int] = {}
        for key in EPOCH_METRICS:
            value = body.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or abs(value) > 1e15:
                raise ReportRefused(f"{key}: a finite number")
            metrics[key] = value
        job, feats = run.job_id, run.features
        await self.store.open_round(job, number, number - 1)
        await self.store.start_collecting(job, number, feats)
        await self.store.transition_round(job, number, RoundState.CLOSING)
        await self.store.complete_round(job, number, accepted=feats, rejected={}, dropped=[])
        await self.store.set_round_metrics(job, number, {**metrics, "round": number,
                                                         "model_version": number})
        await self.store.append_audit(job, "vertical.epoch", {
            "round": number, **{k: metrics[k] for k in
                                ("test_accuracy", "test_loss", "train_loss") if k in metrics}})
        run.epochs = number

    def _end(self, run: VerticalRun, party: str, body: dict[str, Any]) -> None:
        assert run.spec.vertical is not None
        status, reason = body.get("status"), body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            raise ReportRefused(f"reason: text of at most {MAX_REASON} characters")
        if status == "FAILED":
            run.ended.set_result(("FAILED", f"party {party}: {reason or 'gave up'}"))
        elif status == "COMPLETED" and party == run.spec.vertical.label_party:
            if run.epochs < run.spec.rounds:
                run.ended.set_result(("FAILED", f"the label party ended after {run.epochs} "
                                                f"of {run.spec.rounds} epochs"))
            else:
                run.ended.set_result(("COMPLETED", None))
        else:
            raise ReportRefused("the label party reports COMPLETED; any party FAILED")

    # -- lifecycle -------------------------------------------------------------------------
    async def _run(self, run: VerticalRun) -> None:
        try:
            await self._wait_for_parties(run)
            status, reason = await self._wait_for_end(run)
        except asyncio.CancelledError:
            raise
        except TimeoutError as exc:
            status, reason = "FAILED", str(exc)
        except Exception as exc:  # a store failure: the row says so, if it can
            log.exception("vertical job %s failed", run.job_id)
            status, reason = "FAILED", f"coordinator error: {type(exc).__name__}"
        await self._finish(run, status, reason)
        log.info("vertical job %s finished: %s %s", run.job_id, status, reason or "")

    async def _wait_for_parties(self, run: VerticalRun) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.manager.registration_timeout_s
        while True:
            missing = set(run.parties) - set(await self.store.list_device_ids(run.job_id))
            if run.ended.done():  # a party gave up meanwhile
                return
            if not missing:
                break
            if loop.time() > deadline:
                raise TimeoutError(f"parties {sorted(missing)} did not enrol within "
                                   f"{self.manager.registration_timeout_s:.0f}s")
            await asyncio.sleep(self.manager.poll_s)
        run.reported_at = loop.time()
        await self.store.append_audit(run.job_id, "vertical.parties_enrolled",
                                      {"parties": run.parties})

    async def _wait_for_end(self, run: VerticalRun) -> tuple[str, str | None]:
        """The end a party reports, or FAILED after ``round.deadline_s`` without a
        relayed message or a report."""
        loop = asyncio.get_running_loop()
        idle = run.spec.round.deadline_s
        while True:
            last = max(run.reported_at, self.relay.last_activity(run.job_id) or 0.0)
            left = last + idle - loop.time()
            if left <= 0:
                return "FAILED", (f"no progress for {idle:.0f}s (round.deadline_s) after "
                                  f"epoch {run.epochs} of {run.spec.rounds}")
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(run.ended), left)

    async def _finish(self, run: VerticalRun, status: str, reason: str | None) -> None:
        self.runs.pop(run.job_id, None)
        self.tasks.pop(run.job_id, None)
        if not run.ended.done():
            run.ended.set_result((status, reason))
        view = await self.relay.close(run.job_id)
        if view is not None:
            await self.store.append_audit(run.job_id, "vertical.relayed", {
                **view.as_dict(), "psi": run.psi, "epochs": run.epochs})
        row = await self.store.get_job(run.job_id)
        if row is not None and row["status"] == "RUNNING":
            await self.store.finish_job(run.job_id, status, reason)

    async def cancel(self, job_id: str, by: str) -> bool:
        """Stop a running vertical job (CANCELLED); False when it is not one."""
        task, run = self.tasks.pop(job_id, None), self.runs.get(job_id)
        if task is None or run is None:
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await self._finish(run, "CANCELLED", f"cancelled by {by}")
        return True

    async def interrupted(self, job_id: str) -> None:
        """A RUNNING vertical row this coordinator does not run (it restarted): FAILED."""
        if job_id not in self.runs:
            await self.store.finish_job(job_id, "FAILED", RESTARTED)

    async def stop(self) -> None:
        """Stop the lifecycles without finishing the jobs (the coordinator stops)."""
        for task in self.tasks.values():
            task.cancel()
        for task in list(self.tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()
        for job_id in list(self.runs):
            await self.relay.close(job_id)
        self.runs.clear()


__all__ = ["VerticalJobs", "VerticalRun", "is_vertical"]
