"""The round loop of a job, shared by both deployments.

Embedded runs simulated devices inline (``run_devices``) and evaluates centrally
(``after_round``); the coordinator service lets real devices pull their tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tsfl.pipeline.coordinator import Coordinator, RoundResult
from tsfl.privacy.plan import BUDGET_EXHAUSTED

RunDevices = Callable[[list[str]], Awaitable[None]]
AfterRound = Callable[[RoundResult], Awaitable[str | None]]  # a reason to stop, or None

MAX_FAILED_IN_A_ROW = 3


@dataclass
class JobOutcome:
    status: str
    reason: str | None
    results: list[RoundResult] = field(default_factory=list)


async def drive_rounds(coordinator: Coordinator, job_id: str, total_rounds: int, *,
                       run_devices: RunDevices | None = None,
                       after_round: AfterRound | None = None,
                       finish_on_cancel: bool = True) -> JobOutcome:
    """Run rounds until ``total_rounds`` (or a stop reason); finishes the job.

    ``finish_on_cancel=False`` leaves a cancelled job RUNNING in the store, for a service
    that is stopping and will resume it.
    """
    outcome = JobOutcome("COMPLETED", None)
    failed_in_a_row = 0
    try:
        while True:
            if coordinator.open_round_number(job_id) is None:
                if coordinator.jobs[job_id].last_round >= total_rounds:
                    break
                cohort = await coordinator.open_round(job_id)
                if cohort and run_devices is not None:
                    await run_devices(cohort)
                    await coordinator.end_collecting(job_id)  # nothing more will come
            result = await coordinator.wait_round(job_id)
            outcome.results.append(result)
            failed_in_a_row = 0 if result.ok else failed_in_a_row + 1
            stop = await after_round(result) if after_round else None
            if not result.ok and (result.reason or "").startswith(BUDGET_EXHAUSTED):
                outcome.reason = BUDGET_EXHAUSTED  # the release was withheld: stop here
                break
            if failed_in_a_row >= MAX_FAILED_IN_A_ROW:
                outcome.status = "FAILED"
                outcome.reason = (f"{MAX_FAILED_IN_A_ROW} rounds in a row failed "
                                  f"(last: {result.reason})")
                break
            if stop:
                outcome.reason = stop
                break
    except asyncio.CancelledError:
        if finish_on_cancel and job_id in coordinator.jobs:
            await coordinator.finish_job(job_id, "FAILED", "interrupted")
        raise
    except Exception as exc:
        if job_id in coordinator.jobs:
            await coordinator.finish_job(job_id, "FAILED", f"internal error: {exc}")
        raise
    if outcome.status == "COMPLETED" and outcome.results and not any(
            r.ok for r in outcome.results) and outcome.reason is None:
        last = outcome.results[-1].reason
        outcome.status, outcome.reason = "FAILED", f"no round succeeded (last: {last})"
    await coordinator.finish_job(job_id, outcome.status, outcome.reason)
    return outcome
