"""The distributed deployment end to end: six service processes over a real Kafka-wire
broker (Tansu) and PostgreSQL, devices over real gRPC."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from stack_helpers import check_counted_once as _check_counted_once
from stack_helpers import embedded_final as _embedded_final
from stack_helpers import final_model as _final_model
from stack_helpers import fleet as _fleet
from stack_helpers import job_info as _job
from stack_helpers import submit as _submit

from tsfl.config import parse_job
from tsfl.he import HeJob
from tsfl.runtime import stack
from tsfl.runtime.embedded import run_embedded
from tsfl.storage import Store

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

JOB = {
    "name": "dist", "seed": 5, "rounds": 5,
    "clients": {"count": 20, "per_round": 10},
    "model": {"kind": "mlp", "hidden": [32]},
    "training": {"lr": 0.1, "epochs": 2, "batch_size": 16},
    "round": {"deadline_s": 120},
}


def test_distributed_job_equals_the_embedded_run(services, database, tmp_path):
    state, _ = services
    job_id = _submit(state.grpc, JOB)
    contributed = _fleet(state.grpc, job_id, JOB)
    assert sum(contributed) == 5 * 10
    assert _job(state.grpc, job_id).status == "COMPLETED"
    final, rounds, parts = asyncio.run(_final_model(database, job_id))
    _check_counted_once(rounds, parts, JOB)
    embedded = asyncio.run(run_embedded(parse_job(JOB), tmp_path / "embedded"))
    assert np.max(np.abs(final - embedded.final_vector)) <= 1e-5
    # model quality per round, distributed as embedded: the coordinator evaluates each
    # released model on the same held-out split (recorded just after each release)
    deadline = time.monotonic() + 60
    while True:
        rounds = asyncio.run(_final_model(database, job_id))[1]
        if all((r["metrics"] or {}).get("test_accuracy") is not None for r in rounds):
            break
        assert time.monotonic() < deadline, [r["metrics"] for r in rounds]
        time.sleep(0.5)
    for r, m in zip(rounds, embedded.metrics, strict=True):
        assert r["metrics"]["test_accuracy"] == pytest.approx(m["test_accuracy"], abs=1e-3)
        assert r["metrics"]["test_loss"] == pytest.approx(m["test_loss"], abs=1e-3)
    # ... and the CLI shows and exports them
    from tsfl.cli.main import main

    assert main(["job", "metrics", job_id, "--coordinator", state.grpc,
                 "--out", str(tmp_path / "m")]) == 0
    exported = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert [m["round"] for m in exported] == [1, 2, 3, 4, 5]
    assert all(m["test_accuracy"] is not None for m in exported)
    assert (tmp_path / "m" / "curves.png").stat().st_size > 0


DP_JOB = {**JOB, "name": "dist-dp", "rounds": 3,
          "privacy": {"mode": "central", "clip_norm": 0.5, "noise_multiplier": 1.0,
                      "target_epsilon": 50.0}}


def test_distributed_dp_job_is_private_and_charged_as_the_embedded_run(services, database,
                                                                       tmp_path):
    """A deployment refuses reproducible (seeded) noise; with the default CSPRNG its
    cohorts and noise cannot be replayed, yet it charges exactly what the seeded embedded
    simulation of the same job charges, and its model differs from it by the noise."""
    state, _ = services
    with pytest.raises(grpc.RpcError) as refused:
        _submit(state.grpc, {**DP_JOB, "privacy": {**DP_JOB["privacy"], "noise": "seeded"}})
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "seeded" in refused.value.details()
    job_id = _submit(state.grpc, DP_JOB)
    _fleet(state.grpc, job_id, DP_JOB)
    assert _job(state.grpc, job_id).status == "COMPLETED"
    final, rounds, _ = asyncio.run(_final_model(database, job_id))
    assert [r["state"] for r in rounds] == ["PUBLISHED"] * 3

    async def ledger() -> list:
        store = await Store.open(database)
        try:
            return await store.privacy_ledger(job_id)
        finally:
            await store.close()

    rows = asyncio.run(ledger())
    seeded = {**DP_JOB, "privacy": {**DP_JOB["privacy"], "noise": "seeded"}}
    embedded = asyncio.run(run_embedded(parse_job(seeded), tmp_path / "embedded-dp"))
    assert [r["epsilon"] for r in rows] == pytest.approx(
        [m["epsilon"] for m in embedded.metrics], rel=1e-9)
    assert all(r["details"]["population"] == DP_JOB["clients"]["count"] for r in rows)
    assert np.all(np.isfinite(final))
    assert np.max(np.abs(final - embedded.final_vector)) > 1e-3


def _kill_when_collecting(state: stack.StackState, database: str, name: str,
                          job_id_box: list, round_number: int, directory: Path) -> None:
    """Background: kill -9 a service while round N collects, then start it again."""

    async def round_state() -> str | None:
        store = await Store.open(database, migrate_schema=False)
        try:
            if not job_id_box:
                return None
            r = await store.get_round(job_id_box[0], round_number)
            return r["state"] if r else None
        finally:
            await store.close()

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if asyncio.run(round_state()) == "COLLECTING":
            break
        time.sleep(0.05)
    job_id_box.append(asyncio.run(round_state()))  # the state the victim died in
    os.kill(state.services[name]["pid"], signal.SIGKILL)
    time.sleep(1.0)
    stack.start_service(name, state, directory)
    state.save(directory)


@pytest.mark.parametrize("victim", ["aggregator", "coordinator"])
def test_kill_9_mid_round_then_restart_gives_the_same_model(services, database, tmp_path,
                                                             victim):
    import threading

    state, directory = services
    box: list[str] = []
    killer = threading.Thread(target=_kill_when_collecting,
                              args=(state, database, victim, box, 2, directory))
    killer.start()
    job_id = _submit(state.grpc, JOB)
    box.append(job_id)
    _fleet(state.grpc, job_id, JOB)
    killer.join(60)
    assert box[1:] == ["COLLECTING"], "the service was not killed mid-round"
    assert _job(state.grpc, job_id).status == "COMPLETED"
    final, rounds, parts = asyncio.run(_final_model(database, job_id))
    _check_counted_once(rounds, parts, JOB)
    embedded = asyncio.run(run_embedded(parse_job(JOB), tmp_path / "embedded"))
    assert np.max(np.abs(final - embedded.final_vector)) <= 1e-5


BAD_JOB = {**JOB, "name": "bad", "rounds": 1, "clients": {"count": 4, "per_round": 4}}


async def _bad_uploads(address: str, job_id: str) -> dict[str, grpc.StatusCode]:
    from tsfl.core.update import Update
    from tsfl.runtime.simulation import initial_model
    from tsfl.sdk.grpc_transport import GrpcTransport
    from tsfl.v1 import device_pb2
    from tsfl.wire import encode_update

    layout, _ = initial_model(parse_job(BAD_JOB))
    ids = [f"client-{i:05d}" for i in range(4)]
    devices = {i: GrpcTransport(address, job_id, i) for i in ids}
    for t in devices.values():
        await t.register("enrol-me")
    a = devices[ids[0]]
    task = None
    for _ in range(600):
        task = await a.get_task(ids[0])
        if task:
            break
        await asyncio.sleep(0.1)
    assert task is not None

    def frame(client, delta=None, rnd=None, n=10):
        d = np.zeros(layout.total_size, np.float32) if delta is None else delta
        return encode_update(Update(job_id, rnd or task.round, client, task.model_version, n,
                                    d, {"train_loss": 1.0}), layout)

    async def raw_upload(transport, data, *, checksum=None, total=None, md=None):
        import xxhash

        chunk = device_pb2.UploadChunk(job_id=job_id, total_size=total or len(data),
                                       checksum=checksum if checksum is not None
                                       else xxhash.xxh3_64_intdigest(data), data=data)

        async def gen():
            yield chunk

        try:
            await transport.stub.UploadUpdate(gen(), metadata=md or transport._md())
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    codes = {}
    good = frame(ids[0])
    codes["checksum"] = await raw_upload(a, good, checksum=12345)
    codes["shape"] = await raw_upload(a, frame(ids[0], np.zeros(7, np.float32)))
    nan = np.zeros(layout.total_size, np.float32)
    nan[3] = np.nan
    codes["nan"] = await raw_upload(a, frame(ids[0], nan))
    codes["oversized"] = await raw_upload(a, good, total=3 * 1024**3)
    codes["unknown_device"] = await raw_upload(a, good, md=(("x-tsfl-device", "ghost"),
                                                            ("authorization", "Bearer x")))
    codes["bad_token"] = await raw_upload(a, good, md=(("x-tsfl-device", ids[0]),
                                                       ("authorization", "Bearer wrong")))
    codes["wrong_round"] = await raw_upload(a, frame(ids[0], rnd=task.round + 6))
    codes["accepted"] = await raw_upload(a, good)
    codes["replay"] = await raw_upload(a, good)

    # a device that drops mid-upload, reconnects and sends the update again
    b = devices[ids[1]]
    data = frame(ids[1])
    first = device_pb2.UploadChunk(job_id=job_id, total_size=len(data) * 2, checksum=0,
                                   data=data)
    stalled = asyncio.Event()

    async def half():
        yield first
        await stalled.wait()  # never sends the rest

    call = b.stub.UploadUpdate(half(), metadata=b._md())
    await asyncio.sleep(0.3)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    codes["retry_after_drop"] = await raw_upload(b, data)
    codes["retry_again"] = await raw_upload(b, data)
    for i in ids[2:]:
        codes[f"good:{i}"] = await raw_upload(devices[i], frame(i))
    for t in devices.values():
        await t.close()
    return codes


def test_bad_uploads_get_precise_statuses_and_the_round_completes(services, database):
    state, _ = services
    job_id = _submit(state.grpc, BAD_JOB)
    codes = asyncio.run(asyncio.wait_for(_bad_uploads(state.grpc, job_id), 120))
    S = grpc.StatusCode
    assert codes == {
        "checksum": S.DATA_LOSS, "shape": S.INVALID_ARGUMENT, "nan": S.INVALID_ARGUMENT,
        "oversized": S.RESOURCE_EXHAUSTED, "unknown_device": S.UNAUTHENTICATED,
        "bad_token": S.UNAUTHENTICATED, "wrong_round": S.FAILED_PRECONDITION,
        "accepted": S.OK, "replay": S.ALREADY_EXISTS, "retry_after_drop": S.OK,
        "retry_again": S.ALREADY_EXISTS,
        "good:client-00002": S.OK, "good:client-00003": S.OK,
    }
    for _ in range(100):
        if _job(state.grpc, job_id).status != "RUNNING":
            break
        time.sleep(0.1)
    assert _job(state.grpc, job_id).status == "COMPLETED"

    async def trail():
        store = await Store.open(database, migrate_schema=False)
        try:
            return (await store.audit_trail(job_id), await store.list_participants(job_id),
                    await store.verify_audit(job_id))
        finally:
            await store.close()

    events, parts, chain = asyncio.run(trail())
    refused = {e["payload"]["code"] for e in events if e["kind"] == "upload.refused"}
    assert {"checksum", "shape", "nonfinite", "too_large", "wrong_round",
            "duplicate"} <= refused
    # unauthenticated calls: one answer (enrolment not revealed), audited in aggregate
    anonymous = [e["payload"] for e in events if e["kind"] == "call.refused"]
    assert anonymous and anonymous[0]["code"] == "bad_credentials"
    assert anonymous[0]["count"] >= 1 and len(anonymous) <= 2
    assert sorted(p["status"] for p in parts) == ["accepted"] * 4
    assert chain == (True, "ok")


def test_admin_cli_status_cancel_and_graceful_stop(services):
    import subprocess
    import sys

    state, directory = services

    def tsfl(*args):
        return subprocess.run([sys.executable, "-m", "tsfl.cli.main", *args],
                              capture_output=True, text=True, timeout=120)

    spec = directory / "job.yaml"
    spec.write_text(yaml.safe_dump({**JOB, "name": "cancel-me"}))
    sub = tsfl("job", "submit", str(spec), "--coordinator", state.grpc, "--token", "t")
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    status = tsfl("job", "status", job_id, "--coordinator", state.grpc)
    assert '"status": "RUNNING"' in status.stdout and '"devices": 0' in status.stdout
    assert tsfl("job", "cancel", job_id, "--coordinator", state.grpc).returncode == 0
    assert '"status": "CANCELLED"' in tsfl("job", "status", job_id, "--coordinator",
                                           state.grpc).stdout
    watch = tsfl("job", "watch", job_id, "--coordinator", state.grpc)
    assert watch.returncode == 1 and "CANCELLED" in watch.stdout
    audit = tsfl("audit", job_id, "--coordinator", state.grpc)
    assert audit.returncode == 0 and "job.cancelled" in audit.stdout
    assert "hash chain intact" in audit.stderr
    assert "admin:stack-operator" in audit.stdout  # the canceller, by name
    anonymous = {k: v for k, v in os.environ.items() if k != "TSFL_ADMIN_TOKEN"}
    base = [sys.executable, "-m", "tsfl.cli.main", "job", "status", job_id,
            "--coordinator", state.grpc, "--stack-dir"]
    refused_anon = subprocess.run([*base, str(directory / "none")], env=anonymous,
                                  capture_output=True, text=True, timeout=60)
    assert refused_anon.returncode == 1 and "UNAUTHENTICATED" in refused_anon.stderr
    via_stack_dir = subprocess.run([*base, str(directory)], env=anonymous,
                                   capture_output=True, text=True, timeout=60)
    assert via_stack_dir.returncode == 0, via_stack_dir.stderr
    assert oct((directory / "admin-token").stat().st_mode & 0o777) == "0o600"
    bad = directory / "bad.yaml"
    bad.write_text("name: x\nrounds: 0\n")
    refused = tsfl("job", "submit", str(bad), "--coordinator", state.grpc)
    assert refused.returncode == 2 and "rounds" in refused.stderr
    missing = tsfl("job", "status", "no-such-job", "--coordinator", state.grpc)
    assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr
    st = tsfl("stack", "status", "--dir", str(directory))
    assert st.returncode == 0 and st.stdout.count("serving") == 6
    assert tsfl("stack", "down", "--dir", str(directory)).returncode == 0
    for name in stack.SERVICE_ORDER:  # SIGTERM: each service said it stopped cleanly
        log = (directory / f"{name}.log").read_text()
        assert f'"msg": "{name} stopped"' in log, name


HE_JOB = {**JOB, "name": "dist-he", "rounds": 3,
          "crypto": {"mode": "he", "he": {"fraction": 0.5, "keying": "shared"}}}


def test_distributed_he_job_equals_the_embedded_run(services, database, tmp_path):
    """CKKS (shared keying) through all six services: the he service sums signed
    ciphertexts it cannot read, the store holds zeros + the encrypted sum, and the key
    holder's model is the embedded one."""
    import json

    from tsfl.he import HeJob, SealedVector, SecretKeySet, open_vector
    from tsfl.he.job import he_params
    from tsfl.identity import IdentityAuthority
    from tsfl.runtime.fleet import run_fleet
    from tsfl.runtime.he_spec import with_he_key
    from tsfl.runtime.simulation import initial_model

    state, _ = services
    spec = parse_job(HE_JOB)
    layout, _ = initial_model(spec)
    keys = SecretKeySet(he_params(spec, layout))
    public, _ = keys.write(tmp_path / "keys")
    ca = IdentityAuthority.generate()  # as `tsfl keys init --authority` records it
    raw = json.loads(public.read_text())
    public.write_text(json.dumps({**raw, "authority": [ca.public_key.hex()]}))
    submitted = yaml.safe_load(with_he_key(yaml.safe_dump(HE_JOB), str(tmp_path / "keys")))
    assert submitted["crypto"]["he"]["key_id"] == keys.key_id
    assert submitted["crypto"]["he"]["authority"] == [ca.public_key.hex()]
    job_id = _submit(state.grpc, submitted)
    contributed = asyncio.run(asyncio.wait_for(run_fleet(
        state.grpc, job_id, "enrol-me", parse_job(submitted), JOB["clients"]["count"],
        [keys], authority=ca), 300))
    assert sum(contributed) == 3 * 10
    assert _job(state.grpc, job_id).status == "COMPLETED"
    final, rounds, parts = asyncio.run(_final_model(database, job_id))
    _check_counted_once(rounds, parts, HE_JOB)

    async def sealed() -> bytes:
        store = await Store.open(database)
        try:
            return (await store.latest_checkpoint(job_id))["sealed"]
        finally:
            await store.close()

    job = HeJob.from_spec(parse_job(submitted), layout)
    assert job is not None and not final[job.selected].any()
    total = SealedVector.from_bytes(asyncio.run(sealed()), job.public, int(job.selected.size))
    final[job.selected] = open_vector(keys, total) / total.weight
    embedded = _embedded_final(tmp_path, HE_JOB)
    assert np.max(np.abs(final - embedded)) <= 1e-5


def test_distributed_threshold_he_job_equals_the_embedded_run(services, database, tmp_path):
    """Threshold keying through all six services: the 20 silos make their key in a
    ceremony through the coordinator (which keeps its public part: the key id in the
    spec), a cohort of 10 cannot open a sum alone (t = 11), so every silo opens every
    model over gRPC; the silos' final model is the embedded one."""
    from tsfl.core.layout import ParamLayout
    from tsfl.identity import IdentityAuthority
    from tsfl.wire.messages import encode_model

    state, _ = services
    ca = IdentityAuthority.generate()
    job = {**HE_JOB, "name": "dist-he-t", "crypto": {"mode": "he", "he": {
        "fraction": 0.5, "keying": "threshold", "authority": [ca.public_key.hex()]}}}
    job_id = _submit(state.grpc, job)
    silos: dict = {}
    contributed = asyncio.run(asyncio.wait_for(run_fleet_silos(
        state.grpc, job_id, job, ca, silos), 300))
    assert sum(contributed) == 3 * 10
    assert _job(state.grpc, job_id).status == "COMPLETED"
    final, rounds, parts = asyncio.run(_final_model(database, job_id))
    _check_counted_once(rounds, parts, job)
    info = _job(state.grpc, job_id)
    spec, layout = parse_job(yaml.safe_load(info.spec_yaml)), ParamLayout.from_json(
        json.loads(info.layout_json))
    he = HeJob.from_spec(spec, layout)
    assert he is not None and not final[he.selected].any()
    assert {s.key_id for d in silos.values() for s in d.keys.values()} == {he.key_id}

    async def sealed() -> tuple[int, bytes]:
        store = await Store.open(database)
        try:
            ckpt = await store.latest_checkpoint(job_id)
            return ckpt["version"], ckpt["sealed"]
        finally:
            await store.close()

    version, data = asyncio.run(sealed())
    model = encode_model(job_id, version, final, layout, sealed=data)
    embedded = _embedded_final(tmp_path, job)
    for device in silos.values():  # each silo opened the final model with the others
        view = device.open_model(model, final, *device.job(he.task_config(), layout))
        assert np.max(np.abs(view - embedded)) <= 1e-5


async def run_fleet_silos(address: str, job_id: str, job: dict, ca, silos: dict) -> list[int]:
    from tsfl.runtime.fleet import run_fleet

    return await run_fleet(address, job_id, "enrol-me", parse_job(job),
                           job["clients"]["count"], authority=ca, silos=silos)


SECAGG_JOB = {**JOB, "name": "dist-secagg", "rounds": 3,
              "crypto": {"mode": "secagg", "secagg": {"stage_timeout_s": 20}}}


def test_distributed_secagg_job_equals_the_embedded_run(services, database, tmp_path):
    """SecAgg+ over gRPC: the coordinator routes keys and sealed shares between real
    devices, unmasks only the sum, and the model is the embedded run's."""
    state, _ = services
    job_id = _submit(state.grpc, SECAGG_JOB)
    contributed = _fleet(state.grpc, job_id, SECAGG_JOB)
    assert sum(contributed) == 3 * 10
    assert _job(state.grpc, job_id).status == "COMPLETED"
    final, rounds, parts = asyncio.run(_final_model(database, job_id))
    _check_counted_once(rounds, parts, SECAGG_JOB)
    embedded = _embedded_final(tmp_path, SECAGG_JOB)
    assert np.max(np.abs(final - embedded)) <= 1e-5
