"""Jobs in the distributed deployment: submission, one round loop per job, cancel, resume,
and a pause while the broker is unreachable.

A job is RUNNING only once its start was announced on the bus: a submission the broker
does not take is refused (:class:`~tsfl.bus.base.BusUnavailable`) and its row, if one
was written, is FAILED. While the broker is unreachable the round loops and round timers
of the running jobs are paused (the jobs stay RUNNING, their GetJob reason says why);
when it answers again each resumes from the store, as after a coordinator restart. A
broker that came back without its data lost the messages of the rounds in flight: those
rounds are FAILED and their jobs go on with the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from tsfl.bus import topics
from tsfl.bus.base import BusUnavailable
from tsfl.bus.kafka import error_text
from tsfl.config import JobSpec, parse_job, parse_spec_text
from tsfl.he import HeError
from tsfl.he.job import threshold_keyed
from tsfl.pipeline import events
from tsfl.pipeline.coordinator import Coordinator, RoundResult
from tsfl.pipeline.credentials import enrollment_matches, session_hash
from tsfl.pipeline.driver import JobOutcome, drive_rounds
from tsfl.pipeline.task_config import rounds_to_run
from tsfl.privacy.plan import resolve_privacy
from tsfl.runtime.admission import AdmissionPolicy, admit, check_quota
from tsfl.runtime.vertical_jobs import VerticalJobs, is_vertical
from tsfl.storage.states import NEXT_STATES, RoundState, StoreError

if TYPE_CHECKING:
    from tsfl.bus.liveness import BrokerWatch, Recovery

log = logging.getLogger("tsfl.jobs")

#: what a bus call may raise when the broker is unreachable
BUS_FAILURES: tuple[type[BaseException], ...] = (BusUnavailable, KafkaError, TimeoutError)
#: the longest a submission waits for the broker to take the job's start
SUBMIT_PUBLISH_S = 15.0
#: the longest a finish (cancel) waits for the broker to take the job's end
FINISH_PUBLISH_S = 10.0


@dataclass
class Submitted:
    job_id: str
    spec: JobSpec
    enrollment_token: str


class JobManager:
    """Owns the coordinator's round loops: one task per running job."""

    def __init__(self, coordinator: Coordinator, *, registration_timeout_s: float = 600.0,
                 poll_s: float = 0.2, policy: AdmissionPolicy | None = None,
                 broker: BrokerWatch | None = None):
        self.coordinator = coordinator
        self.policy = policy or AdmissionPolicy()
        self.store = coordinator.store
        self.registration_timeout_s = registration_timeout_s
        self.poll_s = poll_s
        self.broker = broker  # the broker's liveness (None: not watched, e.g. in memory)
        self.tasks: dict[str, asyncio.Task[JobOutcome | None]] = {}
        self.paused = False
        self._enrolment_ok: dict[str, str] = {}  # job -> SHA-256 of its verified token
        self._enrolment_checks: dict[str, asyncio.Lock] = {}  # job -> its scrypt in flight
        self.vertical = VerticalJobs(self)  # vertical jobs: parties relayed, no rounds

    def broker_outage(self) -> str | None:
        """Why the running jobs cannot progress now (the broker is unreachable), or None."""
        outage = self.broker.outage if self.broker is not None else None
        return None if outage is None else f"paused: {outage.describe()}"

    async def submit(self, spec_yaml: str, enrollment_token: str = "",
                     owner: str | None = None) -> Submitted:
        """Validate a YAML spec (bounded: :mod:`tsfl.spec_yaml`), admit it
        (:func:`tsfl.runtime.admission.admit`: no code, no file outside the data
        directory, a bounded model), build its initial model, persist and start it.
        Nothing is stored for a spec that fails any of that.

        Raises :class:`tsfl.config.ConfigError` for a bad spec, and
        :class:`~tsfl.bus.base.BusUnavailable` when the broker is unreachable: known to be
        down (nothing is stored), or not taking the job's start before the watcher sees
        it down or ``SUBMIT_PUBLISH_S`` pass (its row is FAILED with that reason; never
        left RUNNING)."""
        self._refuse_while_down()
        running = await self.store.list_jobs("RUNNING")
        check_quota(self.policy, [r.get("owner") for r in running], owner)
        spec = await asyncio.to_thread(lambda: parse_job(parse_spec_text(spec_yaml)))
        if spec.vertical is not None:  # its parties train; the coordinator relays
            return await self.vertical.submit(spec, enrollment_token, owner)
        spec, layout, initial = await asyncio.to_thread(admit, spec, self.policy)
        # calibrate the noise / refuse an unreachable budget before anything is stored
        spec = await asyncio.to_thread(resolve_privacy, spec, layout.total_size)
        self._refuse_while_down()
        job_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        token = enrollment_token or secrets.token_hex(24)  # never starts with '-'
        try:
            await self._while_reachable(self.coordinator.submit_job(
                job_id, spec, layout, initial, token, owner), SUBMIT_PUBLISH_S)
        except Exception as exc:  # no RUNNING row without a round loop, whatever failed
            broker = isinstance(exc, BUS_FAILURES)
            reason = (f"{'broker unreachable, ' if broker else ''}job not started "
                      f"({error_text(exc)})")
            await self._not_started(job_id, reason)
            if broker:
                raise BusUnavailable(reason) from exc
            raise
        self._start(job_id, spec)
        return Submitted(job_id, spec, token)

    async def _while_reachable(self, step: Coroutine[Any, Any, None], timeout_s: float
                               ) -> None:
        """Run ``step`` (which publishes) for at most ``timeout_s``, and no longer than
        the broker is known to be reachable: an outage the watcher notices meanwhile ends
        the wait with :class:`~tsfl.bus.base.BusUnavailable`."""
        task = asyncio.ensure_future(step)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while not task.done():
                outage = self.broker.outage if self.broker is not None else None
                if outage is not None:
                    raise BusUnavailable(outage.describe())
                if loop.time() >= deadline:
                    raise TimeoutError(f"the broker took nothing within {timeout_s:.0f} s")
                await asyncio.wait({task}, timeout=min(0.25, deadline - loop.time()))
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        task.result()

    def _refuse_while_down(self) -> None:
        outage = self.broker.outage if self.broker is not None else None
        if outage is not None or self.paused:
            raise BusUnavailable("broker unreachable, job not started: "
                                 + (outage.describe() if outage else "jobs are paused"))

    async def _not_started(self, job_id: str, reason: str) -> None:
        """A submission whose start the broker did not take: no round loop, and its row
        (when it was written) FAILED with ``reason``."""
        self.coordinator.jobs.pop(job_id, None)
        row = await self.store.get_job(job_id)
        if row is not None and row["status"] == "RUNNING":
            await self.store.finish_job(job_id, "FAILED", reason)
        log.warning("job %s not started: %s", job_id, reason)

    async def enrollment_ok(self, job_id: str, token: str) -> bool:
        """Whether ``token`` enrols devices in ``job_id``. The stored digest is a salted
        scrypt (:mod:`tsfl.pipeline.credentials`), checked off the event loop; a token
        once verified is remembered by its SHA-256 for the process, so a fleet's thousands
        of registrations cost one scrypt, not one each."""
        digest = session_hash(token)
        if self._enrolment_ok.get(job_id) == digest:
            return True
        # one scrypt at a time per job: a fleet's first registrations arrive together, and
        # all but the first then find the verified token remembered
        lock = self._enrolment_checks.setdefault(job_id, asyncio.Lock())
        async with lock:
            if self._enrolment_ok.get(job_id) == digest:
                return True
            row = await self.store.get_job(job_id)
            stored = row["enrollment_hash"] if row else None
            ok = await asyncio.to_thread(enrollment_matches, job_id, token, stored)
            if ok:
                self._enrolment_ok[job_id] = digest
        return ok

    async def resume_all(self) -> list[str]:
        """Restart the round loops of every RUNNING job (after a coordinator restart)."""
        resumed = []
        for row in await self.store.list_jobs("RUNNING"):
            if row["id"] in self.tasks or row["id"] in self.coordinator.jobs:
                continue
            if is_vertical(row):  # its relay was in memory: it cannot resume
                await self.vertical.interrupted(row["id"])
                continue
            try:
                await self.coordinator.resume_job(row["id"])
            except LookupError as exc:
                log.warning("cannot resume %s: %s", row["id"], exc)
                continue
            except Exception as exc:  # e.g. a strategy no longer installed: this job only
                log.exception("cannot resume %s", row["id"])
                self.coordinator.jobs.pop(row["id"], None)
                await self.store.finish_job(row["id"], "FAILED", f"cannot resume: {exc}")
                continue
            self._start(row["id"], JobSpec.model_validate(row["spec"]))
            resumed.append(row["id"])
        return resumed

    def _start(self, job_id: str, spec: JobSpec) -> None:
        self.tasks[job_id] = asyncio.create_task(self._run(job_id, spec),
                                                 name=f"tsfl-job-{job_id}")

    async def _run(self, job_id: str, spec: JobSpec) -> JobOutcome | None:
        try:
            await self._wait_for_devices(job_id, spec)
            await self._he_ceremony(job_id, spec)
            outcome = await drive_rounds(self.coordinator, job_id, rounds_to_run(spec),
                                         finish_on_cancel=False,
                                         after_round=self._after_round(job_id, spec))
            log.info("job %s finished: %s %s", job_id, outcome.status, outcome.reason or "")
            return outcome
        except asyncio.CancelledError:
            raise
        except TimeoutError as exc:
            if job_id in self.coordinator.jobs:
                await self.coordinator.finish_job(job_id, "FAILED", str(exc))
        except HeError as exc:  # the silos' key ceremony failed: no key, no rounds
            log.warning("job %s: %s", job_id, exc)
            if job_id in self.coordinator.jobs:
                await self.coordinator.finish_job(job_id, "FAILED", f"key ceremony: {exc}")
        except Exception:
            log.exception("job %s failed", job_id)
        return None

    async def _wait_for_devices(self, job_id: str, spec: JobSpec) -> None:
        """Round 1 waits until ``clients.min_enrolled`` (default: every expected device)
        have enrolled, or the timeout; devices enrolling later join the later rounds."""
        if self.coordinator.jobs[job_id].last_round > 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.registration_timeout_s
        need = spec.clients.start_at
        while await self.store.count_devices(job_id) < need:
            if loop.time() > deadline:
                have = await self.store.count_devices(job_id)
                raise TimeoutError(f"only {have} of {need} devices enrolled "
                                   f"within {self.registration_timeout_s:.0f}s")
            await asyncio.sleep(self.poll_s)

    async def _he_ceremony(self, job_id: str, spec: JobSpec) -> None:
        """A threshold-HE job without a key: its enrolled devices (the first
        ``clients.count`` by id) make it in a key ceremony through the coordinator
        (:meth:`Coordinator.run_he_ceremony`) before round 1."""
        if not self.coordinator.needs_he_ceremony(job_id):
            return
        silos = (await self.store.list_device_ids(job_id))[:spec.clients.count]
        await self.coordinator.run_he_ceremony(job_id, silos)

    def _after_round(self, job_id: str, spec: JobSpec
                     ) -> Callable[[RoundResult], Awaitable[str | None]] | None:
        """Threshold HE: after the last round the job waits (two opening steps at most)
        for its silos to open the final model's sum — they then hold the final model."""
        if not threshold_keyed(spec):
            return None

        async def after(result: RoundResult) -> str | None:
            if result.ok and result.round >= spec.rounds:
                timeout = 2 * spec.crypto.he.stage_timeout_s + 5
                if not await self.coordinator.wait_opened(job_id, result.version, timeout):
                    log.warning("job %s: the silos did not open the final model v%d",
                                job_id, result.version)
            return None

        return after

    async def cancel(self, job_id: str, by: str = "an operator") -> bool:
        """Stop the job's round loop and make its row CANCELLED; True when this call
        changed the row. A RUNNING row without a loop here (left by another coordinator)
        is cancelled too. The end is announced on the bus when the broker takes it within
        ``FINISH_PUBLISH_S``; the row changes either way. Raises :class:`LookupError` for
        an unknown job."""
        if await self.vertical.cancel(job_id, by):
            return True
        task = self.tasks.pop(job_id, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        row = await self.store.get_job(job_id)
        if row is None:
            raise LookupError(f"no job {job_id!r}")
        if row["status"] != "RUNNING":
            return False
        reason = f"cancelled by {by}"
        if job_id in self.coordinator.jobs and self.broker_outage() is None:
            try:
                await asyncio.wait_for(self.coordinator.finish_job(job_id, "CANCELLED", reason),
                                       FINISH_PUBLISH_S)
            except BUS_FAILURES as exc:
                log.warning("job %s cancelled; its end could not be announced on the bus: "
                            "%s", job_id, exc)
        row = await self.store.get_job(job_id)
        if row is not None and row["status"] == "RUNNING":
            self.coordinator.jobs.pop(job_id, None)
            await self.store.finish_job(job_id, "CANCELLED", reason)
        return True

    # -- broker outages --------------------------------------------------------------------
    async def pause(self, reason: str) -> None:
        """The broker is unreachable: stop the round loops and the round timers (a
        deadline must not close or fail a round whose messages cannot move). The jobs stay
        RUNNING; :meth:`resume` picks them up from the store."""
        if self.paused:
            return
        self.paused = True
        running = list(self.coordinator.jobs)
        await self.stop()
        for job in self.coordinator.jobs.values():
            if job.round and job.round.deadline:
                job.round.deadline.cancel()
            if job.round and job.round.secagg:
                job.round.secagg.cancel()
        for job_id in running:
            await self.store.append_audit(job_id, "job.paused", {"reason": reason})
        if running:
            log.warning("jobs paused (%s): %s", reason, ", ".join(running))

    async def resume(self, recovery: Recovery) -> list[str]:
        """The broker answers again: every RUNNING job resumes from the store. When the
        broker lost its data, the rounds in flight lost their messages: they are FAILED
        first (the job goes on with the next round). A job's state is replaced in place,
        so devices never see it missing (they would take it for finished). Returns the
        resumed jobs."""
        if not self.paused:  # a restart no probe saw fail: pause what runs first
            await self.pause("the broker restarted")
        rows = [r for r in await self.store.list_jobs("RUNNING") if not is_vertical(r)]
        failed: dict[str, int] = {}
        if recovery.lost_data:
            for row in rows:
                number = await self._fail_round_in_flight(row["id"])
                if number is not None:
                    failed[row["id"]] = number
        running = {row["id"] for row in rows}
        for job_id in [j for j in self.coordinator.jobs if j not in running]:
            self.coordinator.jobs.pop(job_id, None)  # finished meanwhile (cancelled)
        self.paused = False
        resumed = []
        for row in rows:
            try:
                await self.coordinator.resume_job(row["id"])
            except LookupError as exc:
                log.warning("cannot resume %s: %s", row["id"], exc)
                self.coordinator.jobs.pop(row["id"], None)
                continue
            self._start(row["id"], JobSpec.model_validate(row["spec"]))
            resumed.append(row["id"])
            await self.store.append_audit(row["id"], "job.resumed", {
                "after_s": round(recovery.down_s, 1), "broker_lost_data": recovery.lost_data,
                "failed_round": failed.get(row["id"])})
        if resumed:
            log.info("jobs resumed after the broker outage: %s", ", ".join(resumed))
        return resumed

    async def _fail_round_in_flight(self, job_id: str) -> int | None:
        rounds = await self.store.list_rounds(job_id)
        last = rounds[-1] if rounds else None
        if last is None or RoundState.FAILED not in NEXT_STATES[RoundState(last["state"])]:
            return None
        if last["state"] == RoundState.AGGREGATED:
            return None  # aggregated and checkpointed: resuming publishes it
        reason = "the broker restarted without its data: this round's messages were lost"
        try:
            await self.store.transition_round(job_id, last["number"], RoundState.FAILED,
                                              reason=reason)
        except StoreError as exc:
            log.warning("job %s round %d: %s", job_id, last["number"], exc)
            return None
        with contextlib.suppress(*BUS_FAILURES):  # the stages drop what they hold of it
            await asyncio.wait_for(self.coordinator.bus.publish(
                topics.ROUNDS, events.round_event(events.ROUND_FAILED, job_id, last["number"],
                                                  reason=reason), key=job_id.encode()),
                FINISH_PUBLISH_S)
        return int(last["number"])

    async def stop(self) -> None:
        """Stop the loops without finishing the jobs (a restart resumes them)."""
        if not self.paused:  # a broker outage leaves vertical jobs running (no topic)
            await self.vertical.stop()
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()
