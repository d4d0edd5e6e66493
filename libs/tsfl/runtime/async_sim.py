"""Asynchronous FL (FedBuff) in the embedded simulation, driven by the virtual clock.

``strategy.mode: async`` (Nguyen et al., AISTATS 2022, Algorithm 1): ``concurrency``
devices train at once, each on the latest model it pulled when it became free; their
updates enter :class:`~tsfl.pipeline.async_buffer.AsyncBuffer` with their staleness as
they arrive (in simulated time, :mod:`tsfl.sim.clock`), and every ``K`` accepted updates
the server strategy applies the buffer's weighted mean (a *release*: one record in
metrics.json, ``round`` being the release number). The device that just finished goes
back to the idle pool, and a device drawn uniformly at random from the idle ones (online
first; FedBuff's uniform client sampling) pulls the new model — so the pipeline never
waits for a straggler.

Simulation only, and outside the bus pipeline: a device's update is its client's
training result (a device trains when it pulls, on the model it pulled, which gives
the same result as training later), folded by the buffer with norm bounding
(``robust.aggregator: norm_bounding``). The spec refuses central and local DP,
secure aggregation, HE and the robust rules that judge a whole cohort
(:func:`tsfl.config.rules.check_async`). ``tsfl.db`` records the job, every release as a
round with its participants, checkpoint, audit event and metrics, and the outcome
(:class:`~tsfl.runtime.async_store.ReleaseLog`), as a synchronous run's does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from tsfl.config import ClockSpec, JobSpec
from tsfl.pipeline.async_buffer import AsyncBuffer, Release
from tsfl.pipeline.selection import client_seed
from tsfl.pipeline.strategy_build import observe_loss, strategy_from_spec
from tsfl.runtime.async_store import ReleaseLog
from tsfl.runtime.embedded import RoundCallback, RunResult, _evaluate
from tsfl.runtime.simulation import Federation, build_federation
from tsfl.sim.clock import DeviceProfiles, VirtualClock, model_bytes

#: a participant's reason when the buffer refuses its update
REFUSED = "refused by the buffer (staler than max_staleness, or not finite)"


class _Devices:
    """The idle pool: a uniform draw among idle devices online now (else any idle)."""

    def __init__(self, ids: list[str], profiles: DeviceProfiles, rng: np.random.Generator):
        self.idle = list(ids)
        self.where = {c: i for i, c in enumerate(self.idle)}
        self.profiles, self.rng = profiles, rng

    def take(self, now: float) -> str:
        for _ in range(8):  # a few tries for an online device, then whoever was drawn
            j = int(self.rng.integers(len(self.idle)))
            if self.profiles.online(self.idle[j], now):
                break
        cid = self.idle[j]
        last = self.idle.pop()
        if last != cid:
            self.idle[j] = last
            self.where[last] = j
        del self.where[cid]
        return cid

    def give_back(self, cid: str) -> None:
        self.where[cid] = len(self.idle)
        self.idle.append(cid)


async def run_async(spec: JobSpec, out_dir: Path, *, on_round: RoundCallback | None = None,
                    federation: Federation | None = None) -> RunResult:
    """Run ``spec`` (``strategy.mode: async``) to its releases; one metrics record each."""
    started = time.perf_counter()
    fed = federation or build_federation(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    job_id = f"{spec.name}-{spec.sha256()[:10]}"
    fb = spec.strategy.fedbuff
    clock_spec = spec.simulation.clock or ClockSpec()
    profiles = DeviceProfiles(clock_spec, fed.client_ids, spec.seed)
    size = fed.workspace.layout.total_size
    nbytes = model_bytes(size)
    strategy = strategy_from_spec(spec)
    max_norm = spec.robust.max_norm if spec.robust.aggregator == "norm_bounding" else None
    buf = AsyncBuffer(size, fb.buffer, fb.max_staleness, fb.weighting, fb.a, fb.b, max_norm,
                      by_examples=fb.averaging == "examples")
    clock = VirtualClock()
    devices = _Devices(fed.client_ids, profiles, np.random.default_rng([spec.seed, 0xA5C]))
    vector = fed.initial.astype(np.float32, copy=True)
    tasks = 0
    metrics: list[dict[str, Any]] = []
    releases = fb.releases or spec.rounds
    status, reason = "COMPLETED", None
    wall = {"t0": time.perf_counter()}

    def start() -> None:
        nonlocal tasks
        cid = devices.take(clock.now)
        tasks += 1
        config = {"seed": client_seed(spec.seed, tasks, cid), "round": buf.version + 1,
                  **strategy.client_config(buf.version + 1)}
        base = vector.copy()
        new, n, fit_metrics = fed.clients[cid].fit_vector(base, config)
        delta = np.subtract(new, base, dtype=np.float32)
        begin = profiles.next_online(cid, clock.now)
        done = begin + profiles.task_seconds(cid, int(n), spec.training.epochs, nbytes,
                                             nbytes)
        clock.schedule(done, (cid, buf.version, delta, int(n),
                              fit_metrics.get("train_loss")))

    def record(rel: Release) -> dict[str, Any]:
        number = buf.version
        m: dict[str, Any] = {
            "round": number, "clients": rel.count, "rejected": buf.refused, "dropped": 0,
            "train_loss": rel.train_loss, "test_loss": None, "test_accuracy": None,
            "bytes_up": rel.count * nbytes, "bytes_down": rel.count * nbytes, "codecs": {},
            "skipped": 0, "slowest_upload_s": None, "model_version": number,
            "epsilon": None, "record_epsilon": None, "sim_time_s": clock.now,
            "staleness_mean": float(np.mean(rel.staleness)),
            "staleness_max": int(max(rel.staleness)), "clipped": buf.clipped,
            "server_lr": getattr(strategy, "server_lr", None)}
        if number % fb.evaluate_every == 0 or number == releases:
            m["test_loss"], m["test_accuracy"] = _evaluate(fed, vector,
                                                           spec.evaluation.batch_size)
        now = time.perf_counter()
        m["wall_s"], wall["t0"] = now - wall["t0"], now
        return m

    log = await ReleaseLog.open(out_dir / "tsfl.db", job_id, spec, fed.workspace.layout,
                                vector)
    try:
        for _ in range(fb.concurrency):
            start()
        while buf.version < releases:
            _, (cid, base_version, delta, n, loss) = clock.pop()
            devices.give_back(cid)
            refused = buf.refused
            rel = buf.offer(delta, base_version, n, loss)
            log.offered(cid, REFUSED if buf.refused > refused else None)
            if rel is not None:
                observe_loss(strategy, rel.train_loss)
                vector = strategy.aggregate_fit(vector, rel.mean_delta).astype(np.float32,
                                                                              copy=False)
                clock.advance(clock_spec.server_s)
                m = record(rel)
                metrics.append(m)
                await log.released(buf.version, vector, strategy.state(), rel, m)
                if on_round:
                    on_round(m)
                acc = m["test_accuracy"]
                if spec.target_accuracy is not None and acc is not None and (
                        acc >= spec.target_accuracy):
                    reason = f"target accuracy {spec.target_accuracy} reached"
                    break
            start()  # the freed slot: an idle device pulls the latest model
    except BaseException as exc:
        status, reason = "FAILED", f"interrupted: {type(exc).__name__}"
        raise
    finally:
        await log.close(status, reason)
    return RunResult(job_id, metrics, vector, status, reason, time.perf_counter() - started,
                     out_dir / "tsfl.db", spec, [])
