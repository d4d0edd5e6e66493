"""Privacy against the server and the model consumers, written as the attacks.

Each test plays an adversary of docs/privacy.md with everything it legitimately holds
(the job seed, every task's seed, the released models, the uploads it received) and must
fail to learn what DP hides; where it helps, the same attack is shown to succeed on a
deliberately broken configuration, so the test can fail.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import xxhash

from tsfl.bus import topics
from tsfl.config import ConfigError, parse_job
from tsfl.pipeline.privacy import NOISE_STREAM
from tsfl.pipeline.roles import LocalPipeline
from tsfl.pipeline.selection import UniformSelector, client_seed
from tsfl.privacy.mechanisms import build_mechanism
from tsfl.privacy.noise import SeededNoise
from tsfl.privacy.plan import build_plan, resolve_privacy
from tsfl.runtime.jobs import JobManager
from tsfl.runtime.simulation import build_federation
from tsfl.runtime.transport import InProcessTransport
from tsfl.sdk.privacy_guard import DevicePrivacy, PrivacyFloor, TaskRefused
from tsfl.sdk.runner import ClientRunner
from tsfl.storage import Store
from tsfl.wire.messages import decode_model, decode_update

BASE = {"name": "attack", "seed": 11, "rounds": 3,
        "clients": {"count": 24, "per_round": 6},
        "model": {"kind": "logreg"},
        "training": {"lr": 0.1, "epochs": 1, "batch_size": 16}}
LOCAL = {"mode": "local", "clip_norm": 0.2, "noise_multiplier": 2.0}
CENTRAL = {"mode": "central", "clip_norm": 0.5, "noise_multiplier": 1.0}


@dataclass
class Seen:
    """What the server-side adversary collected: uploads, released frames, the store."""

    uploads: list[Any] = field(default_factory=list)
    models: list[bytes] = field(default_factory=list)
    aggregates: list[bytes] = field(default_factory=list)
    downloads: list[bytes] = field(default_factory=list)
    cohorts: dict[int, list[str]] = field(default_factory=dict)
    participants: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    layout: Any = None
    runners: dict[str, ClientRunner] = field(default_factory=dict)


async def _drain(consumer: Any, out: list, decode: Any = None) -> None:
    try:
        while True:
            rec = await asyncio.wait_for(consumer.getone(), 1.0)
            out.append(decode(rec.value) if decode else bytes(rec.value))
    except TimeoutError:
        pass


async def _run(tmp_path, spec_dict: dict, *, privacy_for=None, register: int | None = None,
               rounds: int | None = None) -> Seen:
    """Run rounds of the embedded pipeline, tapping every topic an adversary could read."""
    spec = parse_job(spec_dict)
    fed = build_federation(spec)
    layout = fed.workspace.layout
    spec = resolve_privacy(spec, layout.total_size)
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = await Store.open(f"sqlite:///{tmp_path / 'attack.db'}")
    pipeline = await LocalPipeline.in_memory(store)
    taps = {name: pipeline.bus.consumer([topic], f"tap-{name}") for name, topic in (
        ("updates", topics.screened_topic(spec.robust.aggregator)),
        ("raw", topics.UPDATES_RAW), ("models", topics.MODELS),
        ("aggregates", topics.AGGREGATES))}
    for tap in taps.values():
        await tap.start()
    seen = Seen(layout=layout)
    try:
        coord = pipeline.coordinator
        await coord.submit_job("j", spec, layout, fed.initial)
        ids = fed.client_ids[:register] if register else fed.client_ids
        for c in ids:
            await coord.register_device("j", c, "t")
        transport = InProcessTransport(coord)
        seen.runners = {c: ClientRunner(c, fed.clients[c], transport, layout,
                                        privacy=privacy_for(c) if privacy_for else None)
                        for c in ids}
        for _ in range(rounds or spec.rounds):
            cohort = await coord.open_round("j")
            number = coord.jobs["j"].last_round
            seen.cohorts[number] = list(cohort)
            for c in cohort:
                task = await transport.get_task(c)
                if task is not None:
                    seen.downloads.append(await transport.download_model(
                        "j", task.model_version))
                    await seen.runners[c].run_task(task)
            result = await coord.wait_round("j")
            if not result.ok:
                break
        await _drain(taps["updates"], seen.uploads,
                     lambda v: decode_update(v, layout, verify_checksum=False))
        await _drain(taps["raw"], seen.uploads,
                     lambda v: decode_update(v, layout, verify_checksum=False))
        await _drain(taps["models"], seen.models)
        await _drain(taps["aggregates"], seen.aggregates)
        seen.participants = await store.list_participants("j")
        seen.ledger = await store.privacy_ledger("j")
        seen.audit = await store.audit_trail("j")
    finally:
        for tap in taps.values():
            await tap.stop()
        await pipeline.stop()
        await store.close()
    return seen


def _known_seeds(spec: dict, seen: Seen, client: str, number: int) -> list[Any]:
    """Every seed a server operator knows or can derive for one device's round."""
    job_seed = spec["seed"]
    task_seed = client_seed(job_seed, number, client)
    ident = xxhash.xxh3_64_intdigest(b"j")
    return [job_seed, task_seed, [task_seed, 0x10CA1], [job_seed, number],
            [job_seed, ident, 0xDE71CE], [task_seed, ident, 0xDE71CE]]


def _regenerate(cfg: dict, seed: Any, size: int) -> np.ndarray:
    mech = build_mechanism("gaussian", noise_multiplier=cfg["noise_multiplier"],
                           sensitivity=2.0 * cfg["clip_norm"])
    return mech.add_noise(np.zeros(size, np.float32), SeededNoise(seed)).astype(np.float64)


def _best_denoising(spec: dict, seen: Seen) -> float:
    """The server's best try at removing a local-DP upload's noise: the smallest residual
    ‖upload − regenerated noise‖ over every upload and every seed it knows. A clipped
    update has norm ≤ C, so a residual near C means the noise came off."""
    cfg = spec["privacy"]
    best = np.inf
    for u in seen.uploads:
        for seed in _known_seeds(spec, seen, u.client_id, u.round):
            noise = _regenerate(cfg, seed, u.delta.size)
            best = min(best, float(np.linalg.norm(u.delta.astype(np.float64) - noise)))
    return best


def test_server_cannot_regenerate_local_dp_noise_from_any_seed_it_knows(tmp_path):
    spec = {**BASE, "privacy": LOCAL}
    seen = asyncio.run(_run(tmp_path / "secure", spec))
    assert seen.uploads
    size = seen.uploads[0].delta.size
    noise_norm = LOCAL["noise_multiplier"] * 2 * LOCAL["clip_norm"] * np.sqrt(size)
    assert _best_denoising(spec, seen) > 0.5 * noise_norm

    # The attack works on a device whose noise the server can predict (a seed it knows):
    # the broken device the issue describes. The test is not blind.
    broken = asyncio.run(_run(tmp_path / "broken", spec,
                              privacy_for=lambda c: DevicePrivacy(simulation_seed=spec["seed"])))
    assert _best_denoising(spec, broken) <= LOCAL["clip_norm"] * 1.01


def test_local_dp_and_dp_sgd_uploads_travel_alone(tmp_path):
    spec = {**BASE, "privacy": LOCAL,
            "training": {**BASE["training"],
                         "dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}}
    seen = asyncio.run(_run(tmp_path, spec))
    assert seen.uploads
    for u in seen.uploads:  # no loss, no record ε, no clip fraction, no silo size
        assert u.metrics == {} and u.num_examples == 1


def test_dp_sgd_batches_and_noise_ignore_the_servers_seed(tmp_path):
    spec = parse_job({**BASE, "training": {**BASE["training"], "dp_sgd": {
        "noise_multiplier": 1.0, "max_grad_norm": 1.0, "noise": "seeded"}}})
    client = build_federation(spec).clients["client-00000"]
    start = client.flat.vector.copy()
    # seeded by the simulation (the device's own seed), the task seed changes nothing:
    a = client.fit_vector(start.copy(), {"seed": 1})[0].copy()
    client.privacy = DevicePrivacy(simulation_seed=client.privacy.simulation_seed)
    b = client.fit_vector(start.copy(), {"seed": 2})[0].copy()
    np.testing.assert_array_equal(a, b)
    # by default the device's CSPRNG draws them: the same task twice differs
    secure = build_federation(parse_job({**BASE, "training": {**BASE["training"], "dp_sgd": {
        "noise_multiplier": 1.0, "max_grad_norm": 1.0}}})).clients["client-00000"]
    c = secure.fit_vector(start.copy(), {"seed": 1})[0].copy()
    d = secure.fit_vector(start.copy(), {"seed": 1})[0].copy()
    assert np.abs(c - d).max() > 1e-6


def _header_extra(frame: bytes) -> dict:
    from tsfl.wire.envelope import unpack_frame

    head, _ = unpack_frame(frame, "model")
    return head.get("extra", {})


def test_released_models_name_nobody(tmp_path):
    """Model consumers (tsfl.models, Faust records, gRPC downloads) learn no client id,
    example count or loss; the operator keeps them in the database."""
    from tsfl.faust_models import TsflCodec

    spec = {**BASE, "privacy": CENTRAL}
    seen = asyncio.run(_run(tmp_path, spec))
    ids = {p["client_id"] for p in seen.participants}
    frames = seen.models + seen.downloads
    assert seen.models and seen.downloads and ids
    for frame in frames:
        extra = _header_extra(frame)
        assert set(extra) <= {"round", "epsilon"}, extra
        assert not any(c.encode() in frame for c in ids)
        record = TsflCodec()._loads(frame)
        assert not {"accepted", "rejected", "num_examples", "train_loss"} & set(record)
    accepted = [p for p in seen.participants if p["status"] == "accepted"]
    assert accepted  # ... while the operator still knows who took part


def test_cohorts_are_secret_and_not_recomputable_from_the_seed(tmp_path):
    spec = {**BASE, "rounds": 4, "privacy": CENTRAL}
    seen = asyncio.run(_run(tmp_path, spec))
    plan = build_plan(parse_job(spec), 650)
    assert plan is not None and plan.sampling == "poisson"
    available = sorted(f"client-{i:05d}" for i in range(BASE["clients"]["count"]))
    guesses = [UniformSelector(spec["seed"]).poisson(n, available, plan.sampling_rate)
               for n in seen.cohorts]
    assert sum(g == seen.cohorts[n] for g, n in zip(guesses, seen.cohorts, strict=True)) < 2
    # seeded (asked for explicitly, simulation only): the seed does recompute them
    seeded = asyncio.run(_run(tmp_path / "seeded", {**spec, "privacy": {
        **CENTRAL, "noise": "seeded"}}))
    assert all(UniformSelector(spec["seed"]).poisson(n, available, plan.sampling_rate)
               == c for n, c in seeded.cohorts.items())


def _noise_recovery_error(spec: dict, seen: Seen) -> float:
    """A model consumer subtracts the noise it regenerates from the job seed and compares
    with the true (un-noised) mean: relative error of the recovered mean."""
    from tsfl.pipeline import events

    plan = build_plan(parse_job(spec), seen.layout.total_size)
    assert plan is not None
    models = [decode_model(f, seen.layout)[2].astype(np.float64) for f in seen.models]
    worst = 0.0
    for agg in seen.aggregates:
        head, payload = events.parse_aggregate(agg)
        number = head["round"]
        if number < 2:
            continue
        mean = np.frombuffer(events.aggregate_parts(head, payload)[0], "<f4").astype(float)
        released = models[number - 1] - models[number - 2]
        mech = plan.mechanism_for(plan.clip_norm)
        noise = mech.add_noise(np.zeros(mean.size, np.float32), SeededNoise(
            [spec["seed"], number, NOISE_STREAM])).astype(np.float64) / plan.expected_clients
        total = mean * head["weight_total"] / plan.expected_clients
        worst = max(worst, float(np.linalg.norm(released - noise - total)
                                 / np.linalg.norm(noise)))
    return worst


def test_model_consumers_cannot_subtract_central_noise(tmp_path):
    spec = {**BASE, "rounds": 3, "privacy": CENTRAL}
    secure = asyncio.run(_run(tmp_path / "secure", spec))
    assert _noise_recovery_error(spec, secure) > 0.5  # the noise stays on
    seeded = {**spec, "privacy": {**CENTRAL, "noise": "seeded"}}
    broken = asyncio.run(_run(tmp_path / "seeded", seeded))
    assert _noise_recovery_error(seeded, broken) < 1e-3  # what `seeded` means


def test_deployment_refuses_seeded_noise_at_submission(tmp_path):
    async def submit(privacy: dict, training: dict | None = None) -> None:
        store = await Store.open(f"sqlite:///{tmp_path / 'jobs.db'}")
        pipeline = await LocalPipeline.in_memory(store)
        try:
            import yaml

            await JobManager(pipeline.coordinator).submit(yaml.safe_dump(
                {**BASE, "privacy": privacy, "training": training or BASE["training"]}))
        finally:
            await pipeline.stop()
            await store.close()

    with pytest.raises(ConfigError, match=r"privacy\.noise: 'seeded'"):
        asyncio.run(submit({**CENTRAL, "noise": "seeded"}))
    with pytest.raises(ConfigError, match=r"training\.dp_sgd\.noise"):
        asyncio.run(submit({"mode": "none"}, {**BASE["training"], "dp_sgd": {
            "noise_multiplier": 1.0, "max_grad_norm": 1.0, "noise": "seeded"}}))
    assert parse_job({**BASE, "privacy": CENTRAL}).privacy.noise == "secure"


def test_device_floor_refuses_a_weak_task_and_the_refusal_is_audited(tmp_path):
    spec = {**BASE, "rounds": 1, "privacy": LOCAL}
    strict = PrivacyFloor(min_noise_multiplier=5.0)
    seen = asyncio.run(_run(tmp_path, spec, privacy_for=lambda c: DevicePrivacy(strict)))
    assert not seen.uploads  # nothing left any device
    declined = [p for p in seen.participants if p["status"] == "rejected"]
    assert declined and all("privacy_floor" in p["reason"] for p in declined)
    audited = [e for e in seen.audit if e["kind"] == "update.rejected"]
    assert {e["payload"]["client_id"] for e in audited} == {p["client_id"] for p in declined}
    assert all(e["actor"].startswith("device:") for e in audited)


def test_device_ledger_stops_the_device_before_the_jobs_budget(tmp_path):
    """Each device charges its own uploads (no amplification) and declines the upload that
    would pass the job's target; the server's ledger never reports less than any device
    spent."""
    spec = {**BASE, "rounds": 6, "clients": {"count": 8, "per_round": 8},
            "round": {"min_updates": 1},
            "privacy": {**LOCAL, "noise_multiplier": 3.0, "target_epsilon": 3.0}}
    seen = asyncio.run(_run(tmp_path, spec))
    spent = [r.privacy.epsilon("j") for r in seen.runners.values()]
    assert max(spent) <= 3.0
    assert any("budget" in (p["reason"] or "") for p in seen.participants)
    assert seen.ledger and seen.ledger[-1]["epsilon"] >= max(spent) - 1e-9
    assert all(r["details"]["neighboring"] == "add_remove" and not r["details"]["amplified"]
               for r in seen.ledger)


def test_fixed_size_sampling_is_charged_for_the_devices_really_registered(tmp_path):
    spec = {**BASE, "rounds": 2, "clients": {"count": 24, "per_round": 6},
            "privacy": {**CENTRAL, "sampling": "fixed"}}
    seen = asyncio.run(_run(tmp_path, spec, register=12))
    assert [r["sampling_rate"] for r in seen.ledger] == [6 / 12, 6 / 12]
    assert all(r["details"]["population"] == 12
               and r["details"]["neighboring"] == "replace_one" for r in seen.ledger)
    planned = build_plan(parse_job(spec), 650)
    assert planned is not None and planned.sampling_rate == 6 / 24


def test_adaptive_clipping_split_under_replace_one():
    """Replacing one client moves the centred count by 1 (a −½ becomes a +½), not ½: the
    update sum's share of the noise is z_Δ = (z⁻² − σ_b⁻²)^(−1/2), and the pair of
    releases is exactly a Gaussian of multiplier z."""
    z, sb = 1.0, 2.0
    adaptive = {"adaptive_clipping": {"count_stddev": sb}}
    fixed = build_plan(parse_job({**BASE, "privacy": {**CENTRAL, "sampling": "fixed",
                                                       **adaptive}}), 650)
    poisson = build_plan(parse_job({**BASE, "privacy": {**CENTRAL, **adaptive}}), 650)
    assert fixed is not None and poisson is not None
    z_fixed, z_poisson = fixed.update_noise_multiplier(), poisson.update_noise_multiplier()
    assert z_fixed == pytest.approx((z ** -2 - sb ** -2) ** -0.5)
    assert z_poisson == pytest.approx((z ** -2 - (2 * sb) ** -2) ** -0.5)
    # sum (sensitivity 2C, std z_Δ·2C) and count (sensitivity 1, std σ_b) together:
    assert (z_fixed ** -2 + (sb / 1.0) ** -2) ** -0.5 == pytest.approx(z)
    with pytest.raises(ConfigError, match="count_stddev"):
        resolve_privacy(parse_job({**BASE, "privacy": {
            **CENTRAL, "sampling": "fixed", "adaptive_clipping": {"count_stddev": 0.9}}}),
            650)


# -- a malicious server's task settings (the device's floor holds) --------------------------
GAUSS = {"mechanism": "gaussian", "clip_norm": 0.2, "noise_multiplier": 2.0}


def test_a_task_that_leaves_local_dp_out_is_refused_by_a_device_with_a_floor():
    guard = DevicePrivacy(PrivacyFloor(min_noise_multiplier=1.0))
    with pytest.raises(TaskRefused, match="only under local DP"):
        guard.check_task("j", {"seed": 1}, 100)
    assert guard.check_task("j", {"local_dp": GAUSS}, 100) is not None
    # a DP-SGD silo protects its records itself; a device without a floor takes any task
    assert guard.check_task("j", {}, 100, trains_with_dp_sgd=True) is None
    assert DevicePrivacy().check_task("j", {}, 100) is None


def test_a_servers_delta_does_not_stretch_the_devices_budget():
    guard = DevicePrivacy(PrivacyFloor(max_epsilon=3.0))
    loose = {**GAUSS, "noise_multiplier": 1.0, "delta": 0.99}
    uploads = 0
    with pytest.raises(TaskRefused, match="above its cap"):
        for _ in range(50):
            s = guard.check_local_dp("j", loose, 100)
            guard.charge_local("j", s, 100)
            uploads += 1
    assert uploads <= 2  # at δ = 1e-5 (the owner's), z = 1 affords two uploads under ε = 3
    assert guard.epsilon("j") <= 3.0


def test_switching_mechanism_does_not_get_past_the_floor():
    guard = DevicePrivacy(PrivacyFloor(min_noise_multiplier=5.0, max_clip_norm=1.0))
    with pytest.raises(TaskRefused, match="staircase"):
        guard.check_local_dp("j", {"mechanism": "staircase", "clip_norm": 1.0,
                                   "epsilon": 50.0}, 216)
    opted_in = DevicePrivacy(PrivacyFloor(max_clip_norm=1.0,
                                          mechanisms=("gaussian", "staircase")))
    with pytest.raises(TaskRefused, match="in L2"):  # an L∞ ball of 1.0 reaches √216 in L2
        opted_in.check_local_dp("j", {"mechanism": "staircase", "clip_norm": 1.0,
                                      "epsilon": 1.0}, 216)


def test_the_device_ledger_survives_a_restart_and_caps_all_jobs(tmp_path):
    path = tmp_path / "ledger.json"
    floor = PrivacyFloor(max_epsilon=2.0, max_total_epsilon=4.0)
    first = DevicePrivacy(floor, ledger_path=path)
    s = first.check_local_dp("j", {**GAUSS, "noise_multiplier": 3.0}, 100)
    first.charge_local("j", s, 100)
    spent = first.epsilon("j")
    again = DevicePrivacy(floor, ledger_path=path)  # the server made the device restart
    assert again.uploads("j") == 1 and again.epsilon("j") == pytest.approx(spent)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    refused, charged = 0, 0
    for job in (f"job-{i}" for i in range(10)):  # a fresh job id buys no fresh budget
        try:
            s = again.check_local_dp(job, {**GAUSS, "noise_multiplier": 3.0}, 100)
            again.charge_local(job, s, 100)
            charged += 1
        except TaskRefused:
            refused += 1
    total = sum(again.epsilon(j) for j in ["j", *(f"job-{i}" for i in range(10))])
    assert refused and total <= 4.0


def test_dp_sgd_steps_and_batches_are_the_devices_not_the_tasks():
    spec = parse_job({**BASE, "training": {**BASE["training"], "dp_sgd": {
        "noise_multiplier": 1.0, "max_grad_norm": 1.0}}})
    client = build_federation(spec).clients["client-00000"]
    start = client.flat.vector.copy()
    client.fit_vector(start.copy(), {"epochs": 30, "batch_size": 10_000})
    honest = build_federation(spec).clients["client-00000"]
    honest.fit_vector(start.copy(), {})
    assert client.record_accountant.steps == honest.record_accountant.steps
    assert client.record_epsilon == pytest.approx(honest.record_epsilon)


def test_central_dp_refuses_filters_that_judge_one_update_by_the_others():
    robust = {"aggregator": "norm_bounding", "max_norm": 1.0}
    with pytest.raises(ConfigError, match="min_cosine"):
        parse_job({**BASE, "privacy": CENTRAL, "robust": robust})
    parse_job({**BASE, "privacy": CENTRAL, "robust": {
        **robust, "min_cosine": None, "max_norm_ratio": None, "reputation_threshold": 0}})


def test_failed_and_late_local_dp_uploads_are_charged(tmp_path):
    """Rounds that fail (too few updates) still delivered noised updates to the server: its
    ledger charges them, so it never reports less than a device spent."""
    spec = {**BASE, "rounds": 3, "clients": {"count": 4, "per_round": 4},
            "round": {"min_updates": 4, "deadline_s": 0.5},
            "privacy": {**LOCAL, "noise_multiplier": 3.0}}
    offline = {"client-00003"}

    def privacy_for(c: str) -> DevicePrivacy:
        if c in offline:  # declines everything: the round cannot reach min_updates
            return DevicePrivacy(PrivacyFloor(min_noise_multiplier=100.0))
        return DevicePrivacy()

    seen = asyncio.run(_run(tmp_path, spec, privacy_for=privacy_for, rounds=1))
    spent = [r.privacy.epsilon("j") for c, r in seen.runners.items() if c not in offline]
    assert max(spent) > 0
    assert seen.ledger and seen.ledger[-1]["details"].get("withheld")
    assert seen.ledger[-1]["epsilon"] >= max(spent) - 1e-9
