"""The embedded deployment: the whole pipeline in one asyncio process.

Coordinator and aggregator roles run over a :class:`MemoryBus` with a SQLite
store; simulated devices run the SDK's :class:`ClientRunner` over an in-process
transport. Nothing here is specific to simulation but the device loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsfl.config import JobSpec
from tsfl.he import HeJob, SecretKeySet
from tsfl.interop.checkpoints import warm_start
from tsfl.pipeline.coordinator import RoundResult
from tsfl.pipeline.driver import drive_rounds
from tsfl.pipeline.registry import announce
from tsfl.pipeline.roles import LocalPipeline
from tsfl.privacy.plan import resolve_privacy
from tsfl.robust.attacks import add_trigger
from tsfl.runtime.cohort import CohortTraining
from tsfl.runtime.dropout import DropoutPlan, Vanished, Vanishing
from tsfl.runtime.he_setup import he_setup
from tsfl.runtime.report import robustness_summary
from tsfl.runtime.secagg_setup import secagg_devices, secagg_summary
from tsfl.runtime.simulation import Federation, build_federation
from tsfl.runtime.transport import InProcessTransport, SimulatedLinks
from tsfl.runtime.virtual_time import SimulatedRounds, configure_selection, reporting
from tsfl.sdk.runner import ClientRunner, TrainedUpdate
from tsfl.secagg.round import SecAggAbort
from tsfl.storage.store import Store
from tsfl.training.loop import evaluate

RoundCallback = Callable[[dict[str, Any]], None]


@dataclass
class RunResult:
    job_id: str
    metrics: list[dict[str, Any]]
    final_vector: np.ndarray
    status: str
    reason: str | None
    wall_s: float
    database: Path
    spec: JobSpec  # as submitted (a calibrated noise multiplier filled in)
    ledger: list[dict[str, Any]]  # privacy ledger rows (DP jobs)
    robustness: dict[str, Any] | None = None  # summary.json's robustness block
    crypto: dict[str, Any] | None = None  # summary.json's crypto block (HE jobs)
    vertical: dict[str, Any] | None = None  # summary.json's vertical block (vertical jobs)


def _evaluate(fed: Federation, vector: np.ndarray, batch_size: int) -> tuple[float, float]:
    fed.evaluator.load(vector)
    return evaluate(fed.evaluator.module, fed.x_test, fed.y_test, batch_size)


def record_epsilon(fed: Federation, result: RoundResult) -> float | None:
    """The largest record-level ε (DP-SGD) on the round's devices, read from their own
    ledgers — simulation sees both sides; a real device never uploads it."""
    cohort = [*result.accepted, *result.rejected, *result.dropped]
    spent = [e for c in cohort if c in fed.clients
             and (e := getattr(fed.clients[c], "record_epsilon", None)) is not None]
    if spent:
        fed.record_epsilon = max([*spent, fed.record_epsilon or 0.0])
    return fed.record_epsilon


async def run_embedded(spec: JobSpec, out_dir: Path, *, on_round: RoundCallback | None = None,
                       federation: Federation | None = None,
                       database_url: str | None = None,
                       he_keys: SecretKeySet | None = None,
                       wrap_transport: Callable[[Any], Any] | None = None) -> RunResult:
    """Run ``spec`` to completion in this process; return per-round metrics.

    ``wrap_transport`` wraps the devices' in-process transport (the privacy audit taps
    what the server receives: :mod:`tsfl.runtime.canaries`)."""
    if spec.vertical is not None:  # split training among parties (tsfl.vertical)
        from tsfl.runtime.vertical import run_vertical

        return run_vertical(spec, out_dir, on_round=on_round)
    if spec.strategy.mode == "async":  # FedBuff on the virtual clock (no rounds, no bus)
        from tsfl.runtime.async_sim import run_async

        return await run_async(spec, out_dir, on_round=on_round, federation=federation)
    started = time.perf_counter()
    fed = federation or build_federation(spec)
    layout = fed.workspace.layout
    if spec.model.init is not None:  # warm start, checked against the layout
        fed.initial = warm_start(spec.model.init, layout)
    spec = resolve_privacy(spec, layout.total_size)  # ConfigError for a budget it cannot meet
    out_dir.mkdir(parents=True, exist_ok=True)
    # Deterministic id (before a fresh HE key's id enters the spec): with it the bus's
    # partitioning, hence the order updates are folded in (float summation order), is the
    # same on every run of the same spec.
    job_id = f"{spec.name}-{spec.sha256()[:10]}"
    he = he_setup(spec, layout, fed.client_ids, job_id, out_dir, he_keys)
    if he is not None:
        spec = he.spec  # the key id and the identity authority filled in
    he_job = HeJob.from_spec(spec, layout)
    db_path = out_dir / "tsfl.db"
    if database_url is None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        database_url = f"sqlite:///{db_path}"
    store = await Store.open(database_url, exclusive=database_url.startswith("sqlite"))
    pipeline = await LocalPipeline.in_memory(store)
    coordinator = pipeline.coordinator
    coordinator.he_openings = True  # the in-process devices open threshold-HE sums
    metrics: list[dict[str, Any]] = []
    try:
        await coordinator.submit_job(job_id, spec, layout, fed.initial)
        for cid in fed.client_ids:  # simulated devices enrol like real ones
            await coordinator.register_device(job_id, cid, secrets.token_hex(16))
        links = (SimulatedLinks(spec.simulation.network, spec.seed)
                 if spec.simulation.network is not None else None)
        transport = InProcessTransport(coordinator, links)
        if wrap_transport is not None:
            transport = wrap_transport(transport)
        secagg = (secagg_devices(spec, fed.client_ids) if spec.crypto.mode == "secagg"
                  else {})  # an identity authority per run, on the devices' side only
        batch = CohortTraining(spec, fed)  # simulation.batched: a cohort trains in one call
        sim = SimulatedRounds(spec, fed) if spec.simulation.clock is not None else None
        book = configure_selection(spec, fed, pipeline.roles["selector"], job_id, sim)
        runners = {cid: ClientRunner(cid, reporting(batch.client(cid), cid, book), transport,
                                     layout,
                                     he=he.devices[cid] if he is not None else None,
                                     secagg=secagg.get(cid))
                   for cid in fed.client_ids}
        vanished: dict[int, set[str]] = {}  # round → its dropped devices (offline then)
        clock = {"t0": time.perf_counter()}
        round_metrics: dict[int, dict[str, Any]] = {}  # written once, with the outputs
        final: dict[str, np.ndarray] = {}

        dropouts = DropoutPlan(spec)

        async def run_devices(cohort: list[str]) -> None:
            number = coordinator.jobs[job_id].last_round
            vanish = dropouts.for_round(number, cohort)
            vanished[number] = set(vanish)
            late = sim.plan(cohort, vanish) if sim is not None else set()  # stragglers
            vanish = {**vanish, **dict.fromkeys(late, "late")}
            await batch.prepare(cohort, transport, () if spec.crypto.mode == "secagg" else vanish)
            if spec.crypto.mode != "secagg":
                live = [cid for cid in cohort if cid not in vanish]  # the dropped are silent
                if he_job is not None and he_job.keying == "threshold":
                    # commit before reveal: each device commits to its section and uploads
                    # it once the cohort's commitments are in (those online: the others
                    # vanished), so the cohort runs together (it trains one at a time)
                    coordinator.expect_he_commits(job_id, live)
                    await asyncio.gather(*(runners[cid].run_once() for cid in live))
                    return
                for cid in live:
                    await runners[cid].run_once()
                return
            # SecAgg+: the cohort trains (one at a time in this process), then runs the
            # protocol's stages together; a dropped device vanishes before its stage
            trained = []
            for cid in cohort:
                task = await transport.get_task(cid)
                if task is not None:
                    trained.append((cid, await runners[cid].train(task)))

            async def protocol(cid: str, update: TrainedUpdate) -> None:
                runner = runners[cid]
                if cid in vanish:
                    runner = ClientRunner(cid, fed.clients[cid], Vanishing(
                        transport, vanish[cid]), layout, secagg=secagg.get(cid))
                with contextlib.suppress(Vanished, SecAggAbort):
                    await runner.send(update)

            await asyncio.gather(*(protocol(cid, u) for cid, u in trained))

        async def after_round(result: RoundResult) -> str | None:
            number = result.round
            record: dict[str, Any] = {
                "round": number,
                "clients": len(result.accepted),
                "rejected": len(result.rejected),
                "dropped": len(result.dropped),
                "train_loss": result.train_loss,
                "test_loss": None,
                "test_accuracy": None,
                "bytes_up": result.bytes_up,
                "bytes_down": result.bytes_down,
                "codecs": result.codecs,
                "skipped": result.codecs.get("zero", {}).get("updates", 0),
                "slowest_upload_s": result.slowest_upload_s,
                "model_version": result.version,
                "epsilon": result.epsilon,
                "record_epsilon": record_epsilon(fed, result),
            }
            if sim is not None:
                record["sim_time_s"] = sim.now  # the virtual clock when the round closed
            if he_job is not None:
                record["sealed_bytes"] = result.sealed_bytes
                record["sealed_values"] = result.sealed_values
            vector = released = coordinator.model_vector(job_id)
            if he_job is not None and he is not None:
                # evaluation is a silo's view: it decrypts the model (threshold keying: the
                # silos online in this round open it together first)
                current = coordinator.jobs[job_id]
                online = [c for c in fed.client_ids if c not in vanished.get(number, ())]
                await he.open_round(transport, job_id, current.version, current.model_bytes,
                                    he_job, layout, online)
                vector = he.view(current.model_bytes, vector, he_job, layout, online)
            final["vector"] = vector.copy()
            if number % spec.evaluation.every == 0 or number == spec.rounds:
                loss, acc = _evaluate(fed, vector, spec.evaluation.batch_size)
                record["test_loss"], record["test_accuracy"] = loss, acc
                round_metrics[number] = {"test_loss": loss, "test_accuracy": acc,
                                         "train_loss": result.train_loss}
            if result.ok:  # tsfl.registry: the version, its metrics and provenance
                await announce(coordinator.bus, store, job_id, spec, layout, result.version,
                               number, released, record, result.epsilon)
            now = time.perf_counter()
            record["wall_s"], clock["t0"] = now - clock["t0"], now
            metrics.append(record)
            if on_round:
                on_round(record)
            if (spec.target_accuracy is not None and record["test_accuracy"] is not None
                    and record["test_accuracy"] >= spec.target_accuracy):
                return f"target accuracy {spec.target_accuracy} reached"
            return None

        outcome = await drive_rounds(coordinator, job_id, spec.rounds,
                                     run_devices=run_devices, after_round=after_round)
        status, reason = outcome.status, outcome.reason
        await store.set_rounds_metrics(job_id, round_metrics)
        ledger = await store.privacy_ledger(job_id)
        final_vector = final.get("vector", fed.initial)
        asr = backdoor_success_rate(fed, final_vector) if spec.attacks.kind == "backdoor" \
            else None
        robustness = robustness_summary(spec, await store.list_participants(job_id),
                                        fed.malicious, asr)
    finally:
        await pipeline.stop()
        await store.close()
        await asyncio.sleep(0)
    crypto = (crypto_summary(spec, metrics, he_job) if he_job is not None else
              secagg_summary(spec, metrics, layout.total_size)
              if spec.crypto.mode == "secagg" else None)
    return RunResult(job_id, metrics, final_vector, status, reason,
                     time.perf_counter() - started, db_path, spec, ledger, robustness, crypto)


def crypto_summary(spec: JobSpec, metrics: list[dict[str, Any]], he: HeJob
                   ) -> dict[str, Any]:
    """summary.json's ``crypto``: the parameters, and the encrypted bytes against the
    float32 bytes of the values they carry (``expansion``)."""
    import math

    from tsfl.he.threshold.keys import JobKey

    sealed = sum(m.get("sealed_bytes", 0) for m in metrics)
    values = sum(m.get("sealed_values", 0) for m in metrics)
    if isinstance(he.public, JobKey):
        t = he.public.params
        parameters: dict[str, Any] = {
            "scheme": "threshold RLWE, coefficient-packed (Mouchet et al. 2021/2022)",
            "keying": "threshold", "poly_degree": t.poly_degree,
            "coeff_modulus_bits": [p.bit_length() for p in t.primes],
            "scale_bits": round(math.log2(t.scale), 2), "security_bits": t.security,
            "silos": t.parties, "threshold": t.threshold, "flooding": t.flooding,
            "flood_bits": round(math.log2(t.flood_sigma), 2), "precision": t.precision,
            "value_bound": t.value_bound, "max_terms": t.max_terms}
    else:
        p = he.public.params
        parameters = {"scheme": "CKKS", "keying": "shared", "poly_degree": p.poly_degree,
                      "coeff_modulus_bits": [p.prime_bits], "scale_bits": p.scale_bits,
                      "security_bits": p.security, "precision": p.precision,
                      "value_bound": p.value_bound, "max_terms": p.max_terms}
    return {"mode": "he", "key_id": he.key_id, "parameters": parameters,
            "encrypted_coordinates": int(he.selected.size),
            "clear_coordinates": int(he.clear.size),
            "bytes_up": sum(m["bytes_up"] for m in metrics),
            "encrypted_bytes_up": sealed,
            "expansion": sealed / (4 * values) if values else None}


def backdoor_success_rate(fed: Federation, vector: np.ndarray) -> float:
    """Share of triggered test inputs (not already of the target class) classified as
    the attack's target."""
    target = fed.attack_target
    keep = fed.y_test != target
    x = fed.x_test[keep].numpy()
    shape = fed.data.input_shape if len(fed.data.input_shape) >= 2 else None
    triggered = torch.from_numpy(add_trigger(x, shape))
    fed.evaluator.load(vector)
    with torch.no_grad():
        pred = fed.evaluator.module(triggered).argmax(dim=1)
    return float((pred == target).float().mean()) if len(pred) else 0.0
