"""What the coordinator records about each release: its metrics (server-side
evaluation, training loss, ε, bytes), the registry announcement, and the devices'
federated evaluation (:mod:`tsfl.pipeline.federated_eval`)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from tsfl.pipeline import registry
from tsfl.pipeline.coordinator_base import CoordinatorBase
from tsfl.pipeline.evaluation import ServerEvaluator
from tsfl.pipeline.federated_eval import EvaluationRefused, VersionEvaluation, check_report
from tsfl.pipeline.job_state import JobState, RoundResult
from tsfl.pipeline.round_metrics import observe_evaluation


class ReleaseRecorder(CoordinatorBase):
    """A part of :class:`~tsfl.pipeline.coordinator.Coordinator` (see the module)."""

    async def _record_release(self, job: JobState, result: RoundResult,
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

    # -- federated evaluation (pipeline.federated_eval) ------------------------------------
    def _devices_evaluate(self, job: JobState) -> bool:
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

    def _settle_device_evaluations(self, job: JobState) -> None:
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
                                               {**((row["metrics"] if row else None) or {}),
                                                **metrics})
