"""Jobs in the distributed deployment: submission, one round loop per job, cancel, resume."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from dataclasses import dataclass

from tsfl.config import JobSpec, parse_job, parse_spec_text
from tsfl.pipeline.coordinator import Coordinator, token_hash
from tsfl.pipeline.driver import JobOutcome, drive_rounds
from tsfl.privacy.plan import resolve_privacy
from tsfl.runtime.admission import AdmissionPolicy, admit

log = logging.getLogger("tsfl.jobs")


@dataclass
class Submitted:
    job_id: str
    spec: JobSpec
    enrollment_token: str


class JobManager:
    """Owns the coordinator's round loops: one task per running job."""

    def __init__(self, coordinator: Coordinator, *, registration_timeout_s: float = 600.0,
                 poll_s: float = 0.2, policy: AdmissionPolicy | None = None):
        self.coordinator = coordinator
        self.policy = policy or AdmissionPolicy()
        self.store = coordinator.store
        self.registration_timeout_s = registration_timeout_s
        self.poll_s = poll_s
        self.tasks: dict[str, asyncio.Task[JobOutcome | None]] = {}

    async def submit(self, spec_yaml: str, enrollment_token: str = "",
                     owner: str | None = None) -> Submitted:
        """Validate a YAML spec (bounded: :mod:`tsfl.spec_yaml`), admit it
        (:func:`tsfl.runtime.admission.admit`: no code, no file outside the data
        directory, a bounded model), build its initial model, persist and start it.
        Nothing is stored for a spec that fails any of that.

        Raises :class:`tsfl.config.ConfigError` for a bad spec."""
        spec = await asyncio.to_thread(lambda: parse_job(parse_spec_text(spec_yaml)))
        spec, layout, initial = await asyncio.to_thread(admit, spec, self.policy)
        # calibrate the noise / refuse an unreachable budget before anything is stored
        spec = await asyncio.to_thread(resolve_privacy, spec, layout.total_size)
        job_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        token = enrollment_token or secrets.token_hex(24)  # never starts with '-'
        await self.coordinator.submit_job(job_id, spec, layout, initial, token, owner)
        self._start(job_id, spec)
        return Submitted(job_id, spec, token)

    async def enrollment_ok(self, job_id: str, token: str) -> bool:
        row = await self.store.get_job(job_id)
        return bool(row and row["enrollment_hash"] and row["enrollment_hash"] == token_hash(token))

    async def resume_all(self) -> list[str]:
        """Restart the round loops of every RUNNING job (after a coordinator restart)."""
        resumed = []
        for row in await self.store.list_jobs("RUNNING"):
            if row["id"] in self.tasks or row["id"] in self.coordinator.jobs:
                continue
            try:
                await self.coordinator.resume_job(row["id"])
            except LookupError as exc:
                log.warning("cannot resume %s: %s", row["id"], exc)
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
            outcome = await drive_rounds(self.coordinator, job_id, spec.rounds,
                                         finish_on_cancel=False)
            log.info("job %s finished: %s %s", job_id, outcome.status, outcome.reason or "")
            return outcome
        except asyncio.CancelledError:
            raise
        except TimeoutError as exc:
            if job_id in self.coordinator.jobs:
                await self.coordinator.finish_job(job_id, "FAILED", str(exc))
        except Exception:
            log.exception("job %s failed", job_id)
        return None

    async def _wait_for_devices(self, job_id: str, spec: JobSpec) -> None:
        """Round 1 waits until every expected device has enrolled (or the timeout)."""
        if self.coordinator.jobs[job_id].last_round > 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.registration_timeout_s
        while len(await self.store.list_device_ids(job_id)) < spec.clients.count:
            if loop.time() > deadline:
                have = len(await self.store.list_device_ids(job_id))
                raise TimeoutError(f"only {have} of {spec.clients.count} devices enrolled "
                                   f"within {self.registration_timeout_s:.0f}s")
            await asyncio.sleep(self.poll_s)

    async def cancel(self, job_id: str, by: str = "an operator") -> bool:
        task = self.tasks.pop(job_id, None)
        if task is None or task.done():
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if job_id in self.coordinator.jobs:
            await self.coordinator.finish_job(job_id, "CANCELLED", f"cancelled by {by}")
        return True

    async def stop(self) -> None:
        """Stop the loops without finishing the jobs (a restart resumes them)."""
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()
