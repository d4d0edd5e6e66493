"""The coordinator's relay between the parties of vertical jobs: bounded mailboxes.

Parties post opaque messages for each other (PSI points already blinded, the PSI result
encrypted between them, activations and gradients naming batch positions, never ids —
docs/privacy.md → Vertical FL) and fetch theirs. What the relay keeps and learns per
message: who sent it to whom, its kind and its length (:class:`RelayView`), never its
contents once delivered.

Every input is checked before it is queued: party and kind names, payload type and
size; a message in flight counts against its mailbox (:data:`MAX_QUEUE` messages), its
job (:data:`MAX_JOB_BYTES`) and the relay (:data:`MAX_TOTAL_BYTES`); a sender past a
bound is refused (it retries once the receiver has caught up). A job closed (ended,
cancelled) drops what it held and wakes its waiting receivers.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict, deque
from dataclasses import dataclass, field

from tsfl.errors import ErrorKind, TsflError

#: the largest message (a PSI request of 2M points fits), within gRPC's unary bound
MAX_PAYLOAD = (64 << 20) - (64 << 10)
#: messages waiting in one mailbox (destination, source, kind)
MAX_QUEUE = 1024
#: bytes in flight for one job, and for the whole relay
MAX_JOB_BYTES = 256 << 20
MAX_TOTAL_BYTES = 1 << 30
#: the longest one Receive waits for a message
MAX_WAIT_S = 60.0
PARTY_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
KIND = re.compile(r"^[a-z.]{1,32}$")


class RelayError(TsflError):
    """A relay call refused; ``code`` is stable: ``not_party``, ``bad_kind``,
    ``bad_payload``, ``bad_timeout``, ``full`` (retry later), ``closed`` (the job relays
    nothing: ended or not vertical), ``empty`` (nothing arrived in time)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class ReportRefused(TsflError):
    """A party's report the job's record does not take (wrong sender, order or shape):
    raised by :mod:`tsfl.runtime.vertical_jobs`, answered by the relay service."""

    kind = ErrorKind.INVALID


@dataclass
class RelayView:
    """What the coordinator learns of one job's traffic: counts and bytes per kind."""

    count: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"messages": dict(self.count), "bytes": dict(self.bytes)}


@dataclass
class _JobBoxes:
    parties: frozenset[str]
    boxes: dict[tuple[str, str, str], deque[bytes]] = field(
        default_factory=lambda: defaultdict(deque))
    held: int = 0  # bytes in flight
    view: RelayView = field(default_factory=RelayView)
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    closed: bool = False
    last_activity: float = 0.0


def check_kind(kind: object) -> str:
    if not isinstance(kind, str) or not KIND.match(kind):
        raise RelayError("bad_kind", "a message kind is 1-32 characters of a-z and '.'")
    return kind


class PartyRelay:
    """Mailboxes keyed by (job, destination, source, kind), for open jobs only."""

    def __init__(self, *, max_total_bytes: int = MAX_TOTAL_BYTES,
                 max_job_bytes: int = MAX_JOB_BYTES, max_queue: int = MAX_QUEUE):
        self.max_total_bytes = max_total_bytes
        self.max_job_bytes = max_job_bytes
        self.max_queue = max_queue
        self._jobs: dict[str, _JobBoxes] = {}
        self.held = 0  # bytes in flight, all jobs

    def open(self, job_id: str, parties: list[str]) -> None:
        """Start relaying for ``job_id`` between ``parties``."""
        if not all(PARTY_NAME.match(p) for p in parties):
            raise RelayError("not_party", "bad party name")
        self._jobs[job_id] = _JobBoxes(frozenset(parties),
                                       last_activity=asyncio.get_running_loop().time())

    async def close(self, job_id: str) -> RelayView | None:
        """Stop relaying for ``job_id``: what it held is dropped, receivers wake."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        job.closed = True
        self.held -= job.held
        job.boxes.clear()
        async with job.cond:
            job.cond.notify_all()
        return job.view

    def is_open(self, job_id: str) -> bool:
        return job_id in self._jobs

    def view(self, job_id: str) -> RelayView | None:
        job = self._jobs.get(job_id)
        return job.view if job is not None else None

    def last_activity(self, job_id: str) -> float | None:
        """The event-loop time of the job's latest relayed message (or its opening)."""
        job = self._jobs.get(job_id)
        return job.last_activity if job is not None else None

    def parties(self, job_id: str) -> frozenset[str]:
        job = self._jobs.get(job_id)
        return job.parties if job is not None else frozenset()

    def _route(self, job_id: str, me: str, peer: object) -> tuple[_JobBoxes, str]:
        job = self._jobs.get(job_id)
        if job is None:
            raise RelayError("closed", f"job {job_id!r} relays no messages (not a running "
                                       "vertical job)")
        if me not in job.parties or not isinstance(peer, str) or peer not in job.parties \
                or peer == me:
            raise RelayError("not_party", "the peer is not another party of this job")
        return job, peer

    async def send(self, job_id: str, me: str, dst: object, kind: object,
                   payload: object) -> None:
        """Queue ``payload`` from ``me`` (authenticated by the caller) for ``dst``."""
        job, dst = self._route(job_id, me, dst)
        kind = check_kind(kind)
        if not isinstance(payload, bytes) or len(payload) > MAX_PAYLOAD:
            raise RelayError("bad_payload", f"a payload is bytes of at most {MAX_PAYLOAD}")
        box = job.boxes[(dst, me, kind)]
        if (len(box) >= self.max_queue or job.held + len(payload) > self.max_job_bytes
                or self.held + len(payload) > self.max_total_bytes):
            raise RelayError("full", "the relay holds as much as it may for this receiver "
                                     "or job: retry once it has read")
        box.append(payload)
        job.held += len(payload)
        self.held += len(payload)
        job.view.count[kind] += 1
        job.view.bytes[kind] += len(payload)
        job.last_activity = asyncio.get_running_loop().time()
        async with job.cond:
            job.cond.notify_all()

    async def receive(self, job_id: str, me: str, src: object, kind: object,
                      wait_s: object) -> bytes:
        """The next message from ``src`` of ``kind`` for ``me``, waiting up to ``wait_s``."""
        job, src = self._route(job_id, me, src)
        kind = check_kind(kind)
        if isinstance(wait_s, bool) or not isinstance(wait_s, int | float) \
                or not 0 <= wait_s <= MAX_WAIT_S:
            raise RelayError("bad_timeout", f"a receive waits 0..{MAX_WAIT_S:.0f} s")
        key = (me, src, kind)

        def ready() -> bool:
            return job.closed or bool(job.boxes.get(key))

        async with job.cond:
            try:
                await asyncio.wait_for(job.cond.wait_for(ready), timeout=float(wait_s))
            except TimeoutError:
                raise RelayError("empty", "nothing yet") from None
        if job.closed:
            raise RelayError("closed", "the job ended")
        msg = job.boxes[key].popleft()
        if not job.boxes[key]:
            del job.boxes[key]
        job.held -= len(msg)
        self.held -= len(msg)
        job.last_activity = asyncio.get_running_loop().time()
        return msg
