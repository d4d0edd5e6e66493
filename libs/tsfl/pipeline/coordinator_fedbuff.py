"""FedBuff through the coordinator: ``strategy.mode: async`` in the distributed deployment
(Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022,
Algorithm 1).

A release is a round with no cohort drawn up front. While it collects, any enrolled
device that asks gets a task on the latest model, as long as fewer than ``concurrency``
devices are training; a device that finishes uploads and asks again. Its update joins
whichever release is open when it arrives (the frame is re-filed under that release:
:func:`~tsfl.wire.messages.retag_update`), and the ``buffer``-th accepted update closes
the release — the aggregator then folds each update weighted by ``s(τ)``, the staleness
``τ`` being the release's model version minus the one the update trained on, computed
by the aggregator itself (:mod:`tsfl.pipeline.async_buffer` has the weights). Updates
staler than ``max_staleness`` are refused here and there.

Rules a device can rely on: one task at a time, one update per device per release (a
device that contributed to the open release gets its next task from the next one), an
upload that arrives while a release closes waits for the next to open (at most the
round deadline), and the model of a task stays downloadable for a release after it is
superseded. A task answers once: the upload claims it before it waits, so a copy of the
upload (a retry, or a replay) is refused rather than joining a later release too.

Devices that take slots and never answer (adversary: enrolled devices, one or many ids):
a task expires after twice the longest time the job's recently accepted tasks took (the
round deadline until :data:`DURATION_SAMPLES` have been accepted; the longest, so that
devices answering at once cannot shorten it under an honest slow device), and a device
whose task expired waits :data:`COOLDOWN_RELEASES` releases before it gets another, so
holding the slots takes ever more ids — each of which the job's enrolment admitted.
Restart: the tasks in flight live in memory only; after a coordinator restart their
uploads are refused (``not_selected``) and the devices ask for new tasks.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

from tsfl.bus import topics
from tsfl.core.protocol import RoundTask, UploadReceipt
from tsfl.pipeline import events
from tsfl.pipeline.coordinator_devices import DeviceDesk
from tsfl.pipeline.job_state import ActiveRound, JobState, UploadRefused
from tsfl.pipeline.routing import update_key
from tsfl.pipeline.selection import client_seed
from tsfl.pipeline.task_config import ingest_topic
from tsfl.privacy.clipping import l2_norm
from tsfl.storage.store import RoundState
from tsfl.wire.envelope import WireError
from tsfl.wire.messages import decode_update, peek_update_meta, retag_update

#: superseded model versions still served, for tasks handed out just before a release
KEPT_VERSIONS = 2
#: accepted tasks whose durations set the expiry (before that: the round deadline)
DURATION_SAMPLES = 5
#: an expired task's device waits this many releases before its next task
COOLDOWN_RELEASES = 2
#: the shortest expiry, whatever the answered tasks took
MIN_EXPIRY_S = 5.0


@dataclass
class Task:
    """A task in flight: the release it was handed out in and the model it trains."""

    round: int
    version: int
    since: float = field(default_factory=time.monotonic)


@dataclass
class Buffer:
    """An asynchronous job's coordinator state beside its :class:`JobState`."""

    in_flight: dict[str, Task] = field(default_factory=dict)
    models: dict[int, bytes] = field(default_factory=dict)  # superseded versions kept
    release_open: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # accept → close, one at a time
    ended: bool = False  # the job finished: waiting uploads are refused at once
    durations: collections.deque[float] = field(  # how long accepted tasks took
        default_factory=lambda: collections.deque(maxlen=100))
    cooldown: dict[str, int] = field(default_factory=dict)  # device → first release again

    def expiry_s(self, deadline_s: float) -> float:
        """How long a task may stay unanswered (see the module docstring)."""
        if len(self.durations) < DURATION_SAMPLES:
            return deadline_s
        return min(deadline_s, max(MIN_EXPIRY_S, 2.0 * max(self.durations)))


def is_buffered(job: JobState) -> bool:
    return job.spec.strategy.mode == "async"


class BufferDesk(DeviceDesk):
    """The device API of :class:`~tsfl.pipeline.coordinator.Coordinator`, with the
    asynchronous jobs' tasks and uploads (see the module); synchronous jobs go to
    :class:`~tsfl.pipeline.coordinator_devices.DeviceDesk` unchanged."""

    buffers: dict[str, Buffer]

    def _buffer(self, job: JobState) -> Buffer:
        buf = self.buffers.get(job.job_id)  # per device call: build one only when missing
        if buf is None:
            buf = self.buffers[job.job_id] = Buffer()
        return buf

    # -- releases (called by the round state machine) --------------------------------------
    async def _open_release(self, job: JobState, active: ActiveRound) -> None:
        """OPEN → COLLECTING with no cohort: devices join the release as they upload."""
        await self.store.start_collecting(job.job_id, active.number, [], None)
        active.state = RoundState.COLLECTING
        active.deadline = asyncio.get_running_loop().call_later(
            job.spec.round.deadline_s,
            lambda: asyncio.ensure_future(self._on_deadline(job.job_id, active.number)))
        await self.bus.publish(topics.ROUNDS, events.round_event(
            events.COLLECTING, job.job_id, active.number, cohort=[],
            model_version=job.version), key=job.job_id.encode())
        self._buffer(job).release_open.set()
        if active.selected is not None and not active.selected.done():
            active.selected.set_result([])

    def _buffer_ended(self, job_id: str) -> None:
        """The job finished: uploads waiting for a next release stop waiting."""
        buf = self.buffers.pop(job_id, None)
        if buf is not None:
            buf.ended = True
            buf.release_open.set()

    def _release_closed(self, job: JobState) -> None:
        if is_buffered(job):
            self._buffer(job).release_open.clear()

    def _superseded(self, job: JobState, version: int, model: bytes) -> None:
        """Keep the model a release replaced for the tasks that still train on it."""
        if not is_buffered(job):
            return
        kept = self._buffer(job).models
        kept[version] = model
        for old in sorted(kept)[:-KEPT_VERSIONS]:
            del kept[old]

    # -- the device API --------------------------------------------------------------------
    async def get_task(self, client_id: str, job_id: str | None = None) -> RoundTask | None:
        job = self.jobs.get(job_id) if job_id else None
        if job is None or not is_buffered(job):
            return await super().get_task(client_id, job_id)
        active, buf = job.round, self._buffer(job)
        self._expire(job, buf)
        task = buf.in_flight.get(client_id)
        if task is None:
            if not self._slot_for(job, buf, client_id):
                return None
            assert active is not None
            task = buf.in_flight[client_id] = Task(active.number, job.version)
        config = {"seed": client_seed(job.spec.seed, task.round, client_id),
                  "round": task.round, **job.client_config(task.round)}
        if job.uplink is not None:
            config["compression"] = dict(job.uplink)
        return RoundTask(job.job_id, task.round, task.version, config)

    def _expire(self, job: JobState, buf: Buffer) -> None:
        """Free the slots of tasks unanswered for too long; their devices cool down."""
        now, limit = time.monotonic(), buf.expiry_s(job.spec.round.deadline_s)
        for c in [c for c, t in buf.in_flight.items() if now - t.since > limit]:
            del buf.in_flight[c]
            buf.cooldown[c] = job.last_round + COOLDOWN_RELEASES

    def _slot_for(self, job: JobState, buf: Buffer, client_id: str) -> bool:
        """Whether ``client_id`` may take a new task now."""
        active = job.round
        if (active is None or active.state is not RoundState.COLLECTING
                or client_id in active.uploaded
                or len(buf.in_flight) >= job.spec.strategy.fedbuff.concurrency):
            return False
        if buf.cooldown.get(client_id, 0) > active.number:
            return False
        buf.cooldown.pop(client_id, None)
        return True

    async def task_available(self, client_id: str, job_id: str) -> bool:
        job = self.jobs.get(job_id)
        if job is None or not is_buffered(job):
            return await super().task_available(client_id, job_id)
        buf = self._buffer(job)  # a heartbeat takes no slot
        self._expire(job, buf)
        return client_id in buf.in_flight or self._slot_for(job, buf, client_id)

    async def download_model(self, job_id: str, version: int,
                             have_version: int | None = None) -> bytes:
        job = self.jobs.get(job_id)
        if job is not None and is_buffered(job) and version in self._buffer(job).models:
            return self._buffer(job).models[version]
        return await super().download_model(job_id, version, have_version)

    def upload_bound(self, job_id: str, client_id: str) -> int:
        job = self.jobs.get(job_id)
        if job is None or not is_buffered(job):
            return super().upload_bound(job_id, client_id)
        if client_id not in self._buffer(job).in_flight:
            raise UploadRefused("not_selected", "no task of this device is in flight")
        return min(8 * job.layout.total_size + 64 * 1024, self.max_update_bytes)

    async def upload(self, client_id: str, data: bytes | bytearray) -> UploadReceipt:
        try:
            meta = peek_update_meta(data, self.max_update_bytes)
        except WireError:
            return await super().upload(client_id, data)  # refused and audited there
        job = self.jobs.get(meta["job_id"])
        if job is None or not is_buffered(job):
            return await super().upload(client_id, data)
        try:
            update = decode_update(data, job.layout, max_bytes=self.max_update_bytes)
        except WireError as exc:
            return await self._refuse(job, job.round, client_id, exc.code, str(exc))
        if meta["client_id"] != client_id:
            return await self._refuse(job, job.round, client_id, "identity",
                                      "update names another client")
        buf = self._buffer(job)
        task = buf.in_flight.get(client_id)
        if task is None or (task.round, task.version) != (meta["round"],
                                                          meta["model_version"]):
            return await self._refuse(job, job.round, client_id, "not_selected",
                                      "no task of this device is in flight for round "
                                      f"{meta['round']} on v{meta['model_version']}")
        del buf.in_flight[client_id]  # claimed: a copy of this upload finds no task
        took = time.monotonic() - task.since
        bound, norm = self._norm_bound(job), l2_norm(update.delta)
        if bound is not None and not norm <= bound:
            return await self._refuse(job, job.round, client_id, "norm_bound",
                                      f"update norm {norm:.4g} exceeds the bound {bound:.4g}")
        deadline = time.monotonic() + job.spec.round.deadline_s
        while True:  # wait (bounded) while a release closes and the next opens
            remaining = deadline - time.monotonic()
            if buf.ended or job.job_id not in self.jobs:
                return await self._refuse(job, job.round, client_id, "round_closed",
                                          "the job has finished")
            if remaining <= 0:
                return await self._refuse(job, job.round, client_id, "round_closed",
                                          "no release opened in time for this update")
            try:
                await asyncio.wait_for(buf.release_open.wait(), remaining)
            except TimeoutError:
                continue
            async with buf.lock:
                active = job.round
                if buf.ended or active is None or active.state is not RoundState.COLLECTING:
                    continue
                receipt = await self._accept_buffered(job, active, client_id, data, meta,
                                                      norm)
                if receipt.accepted:
                    buf.durations.append(took)
                return receipt

    async def _accept_buffered(self, job: JobState, active: ActiveRound, client_id: str,
                               data: bytes | bytearray, meta: dict, norm: float
                               ) -> UploadReceipt:
        tau = job.version - meta["model_version"]
        if tau > job.spec.strategy.fedbuff.max_staleness:
            return await self._refuse(job, active, client_id, "stale_model", (
                f"trained on v{meta['model_version']}, {tau} releases behind v{job.version} "
                f"(max_staleness {job.spec.strategy.fedbuff.max_staleness})"))
        if client_id in active.uploaded:  # its update of this release is in already
            return await self._refuse(job, active, client_id, "duplicate",
                                      "this device's update joined this release already")
        frame = await asyncio.to_thread(retag_update, data, active.number)
        # publish, then persist, then acknowledge (as for a synchronous round)
        await self.bus.publish(ingest_topic(job.spec), frame,
                               key=update_key(job.spec, job.job_id, active.number, client_id))
        await self.store.join_release(job.job_id, active.number, client_id)
        await self.store.record_upload(job.job_id, active.number, client_id,
                                       num_examples=meta["num_examples"],
                                       bytes_up=len(data), metrics={})
        active.cohort.append(client_id)
        active.norms.append(norm)
        active.count_upload(client_id, meta["codecs"], len(data))
        if len(active.uploaded) >= job.spec.strategy.fedbuff.buffer:
            await self._close(job, active)
        return UploadReceipt(True)
