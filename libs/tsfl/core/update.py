"""The update envelope: a client's delta from the global model, with its metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class Update:
    """A client update after decoding.

    ``delta`` is the client's model minus the global model of ``model_version``
    (a float32 vector in the job's :class:`~tsfl.core.layout.ParamLayout`).
    """

    job_id: str
    round: int
    client_id: str
    model_version: int
    num_examples: int
    delta: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)
    codecs: tuple[str, ...] = ()
    wire_bytes: int = 0
    sealed: bytes | memoryview | None = None  # HE: the encrypted coordinates (tsfl.he)

    @property
    def key(self) -> tuple[str, int, str]:
        """The idempotency key: an update counts once per (job, round, client)."""
        return (self.job_id, self.round, self.client_id)

    def meta(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "round": self.round,
            "client_id": self.client_id,
            "model_version": self.model_version,
            "num_examples": self.num_examples,
            "metrics": dict(self.metrics),
            "codecs": list(self.codecs),
        }
