"""Server-side evaluation of each released model, so the distributed deployment reports
model quality per round as the embedded one does.

The coordinator evaluates a job's released model on the held-out split of the job's
dataset: a built-in one (digits, breast_cancer, synthetic — generated, nothing read from
disk), or the npz/csv file admission already confined to the operator's data directory.
It runs in a worker thread, off the event loop, after the model is published (it never
delays a round), and is skipped for HE jobs (the server holds zeros where the model is
encrypted) and for jobs that turn it off (``evaluation.server: false``). A dataset that
cannot be loaded disables evaluation for the job, logged once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from tsfl.config import JobSpec

log = logging.getLogger("tsfl.evaluation")

#: the most test records the coordinator evaluates on (a bounded cost per round)
MAX_TEST_RECORDS = 20_000


class ServerEvaluator:
    """Evaluates one job's released models; loads its test split on first use."""

    def __init__(self, spec: JobSpec):
        self.spec = spec
        self.batch_size = spec.evaluation.batch_size
        self._ready: Any = None  # (module, x_test, y_test) once loaded, False if unusable
        self._lock = asyncio.Lock()

    @property
    def unusable(self) -> bool:
        """True once the job's data proved impossible to load here."""
        return self._ready is False

    @staticmethod
    def applies(spec: JobSpec) -> bool:
        return spec.crypto.mode != "he" and spec.evaluation.server

    def _load(self) -> Any:
        import torch

        from tsfl.sim.datasets import load_dataset
        from tsfl.sim.models import build_model
        from tsfl.training.flat import FlatModule

        data = load_dataset(self.spec.data, self.spec.clients.count)
        n = min(len(data.y_test), MAX_TEST_RECORDS)
        x = torch.from_numpy(np.ascontiguousarray(data.x_test[:n], dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(data.y_test[:n], dtype=np.int64))
        model = build_model(self.spec.model, data.input_shape, data.num_classes,
                            self.spec.seed, allow_import=False)
        return FlatModule(model), x, y

    def _evaluate(self, vector: np.ndarray) -> dict[str, float]:
        from tsfl.training.loop import evaluate

        module, x, y = self._ready
        module.load(vector)
        loss, accuracy = evaluate(module.module, x, y, self.batch_size)
        return {"test_loss": float(loss), "test_accuracy": float(accuracy)}

    async def evaluate(self, vector: np.ndarray) -> dict[str, float] | None:
        """``{"test_accuracy", "test_loss"}`` of ``vector``, or None when the job's data
        cannot be evaluated here."""
        async with self._lock:  # one evaluation of a job at a time, in order
            if self._ready is None:
                try:
                    self._ready = await asyncio.to_thread(self._load)
                except Exception as exc:
                    log.warning("server-side evaluation is off for this job: %s", exc)
                    self._ready = False
            if self._ready is False:
                return None
            return await asyncio.to_thread(self._evaluate, vector)
