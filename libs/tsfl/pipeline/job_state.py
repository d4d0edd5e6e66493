"""A coordinator's in-memory state: each running job, its round in progress, and what a
round ends with. Plain data; the store holds what must survive a restart."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tsfl.config import JobSpec
from tsfl.core.layout import ParamLayout
from tsfl.errors import TsflError
from tsfl.he import HeJob
from tsfl.he.threshold.params import ThresholdParams
from tsfl.pipeline.evaluation import ServerEvaluator
from tsfl.pipeline.federated_eval import VersionEvaluation
from tsfl.pipeline.he_ceremony import CeremonyRelay
from tsfl.pipeline.he_commit import CommitBoard
from tsfl.pipeline.he_opening import OpeningStages
from tsfl.pipeline.secagg_stages import SecAggStages
from tsfl.storage.store import RoundState


class UploadRefused(TsflError):
    """No upload of this device is expected now; ``code`` is the refusal's."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


#: audit chain for events that belong to no job (unreadable or unknown-job uploads)
SYSTEM_AUDIT = "_system"


#: published rounds whose update norms set the default norm bound
NORM_WINDOW = 5


NORM_MIN_HISTORY = 3


#: earlier model versions kept for downlink deltas (compression.downlink: delta)
DOWNLINK_WINDOW = 8


@dataclass
class RoundResult:
    round: int
    ok: bool
    version: int
    accepted: list[str]
    rejected: dict[str, str]
    dropped: list[str]
    num_examples: int
    train_loss: float | None
    bytes_up: int
    bytes_down: int
    reason: str | None = None
    epsilon: float | None = None  # privacy spent after this round (DP jobs)
    codecs: dict[str, dict[str, int]] = field(default_factory=dict)  # chain → updates, bytes
    slowest_upload_s: float | None = None  # the slowest timed upload (the round's straggler)
    sealed_bytes: int = 0  # HE: encrypted bytes received (all accepted uploads)
    sealed_values: int = 0  # HE: how many float values they encrypt


@dataclass
class ActiveRound:
    number: int
    state: RoundState = RoundState.OPEN
    cohort: list[str] = field(default_factory=list)
    seeds: dict[str, int] = field(default_factory=dict)
    uploaded: list[str] = field(default_factory=list)
    declined: set[str] = field(default_factory=set)  # refused the task (device's privacy)
    bytes_up: int = 0
    bytes_down: int = 0
    codec_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    codec_plan: dict[str, dict[str, Any]] = field(default_factory=dict)  # adaptive, per device
    slowest_upload_s: float | None = None
    sealed_bytes: int = 0  # HE: encrypted sections received
    sealed_values: int = 0  # HE: the values they encrypt
    norms: list[float] = field(default_factory=list)  # L2 norms of the accepted uploads
    secagg: SecAggStages | None = None  # secagg jobs: the SecAgg+ round in progress
    he_commits: CommitBoard | None = None  # threshold HE: the round's section commitments
    selected: asyncio.Future[list[str]] | None = None
    done: asyncio.Future[RoundResult] | None = None
    deadline: asyncio.TimerHandle | None = None
    opened_at: float = field(default_factory=time.monotonic)  # for the round's duration

    def count_upload(self, client_id: str, codecs: str, nbytes: int) -> None:
        """An accepted upload: who, and its bytes under its codec chain."""
        self.uploaded.append(client_id)
        self.bytes_up += nbytes
        stats = self.codec_stats.setdefault(codecs or "f32", {"updates": 0, "bytes": 0})
        stats["updates"] += 1
        stats["bytes"] += nbytes


@dataclass
class JobState:
    job_id: str
    spec: JobSpec
    layout: ParamLayout
    version: int
    model_bytes: bytes
    client_config: Any
    round: ActiveRound | None = None
    last_round: int = 0
    local_dp: dict[str, Any] | None = None  # sent with each task when devices add the noise
    uplink: dict[str, Any] | None = None  # compression settings sent with each task
    history: dict[int, np.ndarray] = field(default_factory=dict)  # version → model (deltas)
    delta_cache: dict[int, bytes] = field(default_factory=dict)  # base → delta to current
    he: HeJob | None = None  # HE jobs: public key set and the encrypted coordinates
    he_opening: OpeningStages | None = None  # threshold HE: the current model's opening
    he_ceremony: CeremonyRelay | None = None  # threshold HE: the silos' key ceremony
    he_shape: tuple[ThresholdParams, int] | None = None  # threshold HE: params, size
    previous_norms: collections.deque[float] = field(  # recent rounds' median update norms
        default_factory=lambda: collections.deque(maxlen=NORM_WINDOW))
    evaluator: ServerEvaluator | None = None  # distributed: evaluates each release
    last_test_loss: float | None = None
    fed_eval: VersionEvaluation | None = None  # devices' reports on the current version
    release_round: int | None = None  # the round that released the current version
    enrolled: int = 0  # devices enrolled in the job (kept by registration: no store read)
