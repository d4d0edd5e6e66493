"""Simulated dropouts: which devices of a round vanish, and where (simulation only).

``simulation.dropout`` of each cohort, drawn from the job seed and the round: with
SecAgg+ a dropped device vanishes before one of the four protocol stages (uniformly
chosen), otherwise after training, before its upload. A vanished device is silent — the
server learns of it only by its absence, as with a real one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tsfl.config import JobSpec
from tsfl.errors import ErrorKind, TsflError
from tsfl.pipeline.secagg_stages import STAGES

UPLOAD = "upload"


class Vanished(TsflError):
    """The device dropped out (simulated)."""

    kind = ErrorKind.UNAVAILABLE


class DropoutPlan:
    def __init__(self, spec: JobSpec):
        self.fraction = spec.simulation.dropout
        self.seed = spec.seed
        self.secagg = spec.crypto.mode == "secagg"

    def for_round(self, number: int, cohort: list[str]) -> dict[str, str]:
        """device → the step it vanishes before."""
        count = round(self.fraction * len(cohort))
        if count == 0:
            return {}
        rng = np.random.default_rng([self.seed, number, 0xD209])
        chosen = rng.choice(sorted(cohort), size=count, replace=False)
        steps = [str(s) for s in rng.choice(STAGES, size=count)] if self.secagg else (
            [UPLOAD] * count)
        return dict(zip((str(c) for c in chosen), steps, strict=True))


class Vanishing:
    """A transport that goes silent at ``stage`` (and everything after it)."""

    def __init__(self, inner: Any, stage: str):
        self.inner = inner
        self.stage = stage
        self._gone = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def secagg(self, client_id: str, job_id: str, round_number: int, stage: str,
                     payload: dict[str, Any]) -> dict[str, Any]:
        if self._gone or stage == self.stage:
            self._gone = True
            raise Vanished(f"{client_id} dropped before {stage}")
        return await self.inner.secagg(client_id, job_id, round_number, stage, payload)

    async def upload(self, client_id: str, data: bytes) -> Any:
        raise Vanished(f"{client_id} dropped before uploading")
