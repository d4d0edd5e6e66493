"""The device protocol's plain data, shared by both sides: what a device is asked to do in
a round, and what the coordinator answers to its upload. No I/O, no torch: the
coordinator imports it without loading the client SDK."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RoundTask:
    """Train round ``round`` of ``job_id`` from model ``model_version`` with ``config``."""

    job_id: str
    round: int
    model_version: int
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UploadReceipt:
    """The coordinator's answer to an upload: accepted, or refused with a code."""

    accepted: bool
    code: str = "ok"
    message: str = ""
