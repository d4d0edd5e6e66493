"""Threshold-HE silos over real gRPC (``HeSetup``, ``HeOpen``): the key ceremony through
the coordinator, openings by every silo, the final model held by the silos only — and a
coordinator that substitutes a ceremony message is caught by the silo it lied to, which
aborts with the reason. The coordinator runs over the embedded pipeline (memory bus,
SQLite); tests/rpc/test_distributed.py runs the same through the six services and Kafka."""

from __future__ import annotations

import asyncio
import stat

import grpc
import msgpack
import numpy as np
import pytest
import yaml
from grpc_stack import coordinator_grpc, status_of

from tsfl.config import parse_job
from tsfl.core.layout import ParamLayout
from tsfl.he import HeJob
from tsfl.he.threshold.ceremony import CeremonyParty
from tsfl.identity import DeviceIdentity, IdentityAuthority
from tsfl.pipeline import coordinator_crypto as coordinator_module
from tsfl.pipeline.he_ceremony import CeremonyRelay
from tsfl.runtime.embedded import run_embedded
from tsfl.runtime.fleet import run_fleet
from tsfl.v1 import device_pb2, device_pb2_grpc
from tsfl.wire.messages import encode_model

CA = IdentityAuthority.generate()
JOB = {"name": "silos", "seed": 3, "rounds": 2,
       "clients": {"count": 4, "per_round": 3},  # t = 3 > a cohort's contributors - 1
       "model": {"kind": "mlp", "hidden": [16]},
       "training": {"lr": 0.05, "epochs": 1, "batch_size": 16},
       "round": {"deadline_s": 60},
       "crypto": {"mode": "he", "he": {"authority": [CA.public_key.hex()],
                                       "stage_timeout_s": 20}}}
VICTIM, TARGET = "client-00000", "client-00002"


async def _run(tmp_path, job: dict, silos: dict, share_dir=None) -> tuple:
    async with coordinator_grpc(tmp_path / "c.db") as stack:
        stack.jobs.coordinator.he_openings = True  # what the coordinator service sets
        submitted = await stack.jobs.submit(yaml.safe_dump(job), "enrol")
        counts = await asyncio.wait_for(run_fleet(
            stack.address, submitted.job_id, "enrol", parse_job(job),
            job["clients"]["count"], authority=CA, share_dir=share_dir, silos=silos), 180)
        store = stack.store
        row = await store.get_job(submitted.job_id)
        return (submitted.job_id, counts, row, await store.latest_checkpoint(submitted.job_id),
                await store.audit_trail(submitted.job_id))


def test_threshold_silos_over_grpc_equal_the_embedded_run(tmp_path):
    silos: dict = {}
    job_id, counts, row, ckpt, trail = asyncio.run(_run(tmp_path, JOB, silos,
                                                        tmp_path / "shares"))
    assert row["status"] == "COMPLETED" and sum(counts) == 2 * 3
    kinds = [e["kind"] for e in trail]
    assert kinds.index("he.ceremony.started") < kinds.index("he.key.created") < \
        kinds.index("round.open")
    created = next(e["payload"] for e in trail if e["kind"] == "he.key.created")
    assert created["participants"] == sorted(silos) and created["threshold"] == 3
    # the stored spec names the key every silo made; the server side holds its id only
    spec, layout = parse_job(row["spec"]), ParamLayout.from_json(row["layout"])
    assert spec.crypto.he.key_id == created["key_id"]
    job = HeJob.from_spec(spec, layout)
    assert job is not None and set(vars(job.public)) == {"key_id", "params"}
    for cid, device in silos.items():
        (share,) = device.keys.values()
        assert share.key_id == created["key_id"] and share.device_id == cid
        path = tmp_path / "shares" / job_id / f"{cid}.share"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # the store holds zeros and the encrypted sum; every silo opened the final model
    assert not ckpt["vector"][job.selected].any()
    model = encode_model(job_id, ckpt["version"], ckpt["vector"], layout,
                         sealed=ckpt["sealed"])
    views = [d.open_model(model, ckpt["vector"], *d.job(job.task_config(), layout))
             for d in silos.values()]
    embedded = asyncio.run(run_embedded(parse_job(JOB), tmp_path / "embedded")).final_vector
    for view in views:
        assert np.max(np.abs(view - embedded)) <= 1e-5


class _SubstitutingRelay(CeremonyRelay):
    """The server operator's relay: it shows VICTIM a substituted message of TARGET."""

    step = "advertise"

    def _reply(self, client_id: str, step: str) -> dict:
        reply = super()._reply(client_id, step)
        if client_id != VICTIM or step != self.step:
            return reply
        if step == "advertise":  # its own key for TARGET, certified by its own authority
            rogue = CeremonyParty(DeviceIdentity.enrol(TARGET, IdentityAuthority.generate()),
                                  self.params, self.label, self.ids, [])
            reply["adverts"] = [rogue.advertise() if a["id"] == TARGET else a
                                for a in reply["adverts"]]
        else:  # another silo's public share under TARGET's name
            other = next(d["p0"] for d in reply["deals"] if d["id"] not in (TARGET, VICTIM))
            reply["deals"] = [{**d, "p0": other} if d["id"] == TARGET else d
                              for d in reply["deals"]]
        return reply


@pytest.mark.parametrize("step, finding", [
    ("advertise", f"certificate of '{TARGET}' is from an untrusted authority"),
    ("deal", f"signature of '{TARGET}' on tsfl-he-keygen-deal does not verify"),
])
def test_a_silo_aborts_when_the_server_substitutes_a_ceremony_message(tmp_path, monkeypatch,
                                                                      step, finding):
    relay = type("Relay", (_SubstitutingRelay,), {"step": step})
    monkeypatch.setattr(coordinator_module, "CeremonyRelay", relay)
    silos: dict = {}
    _, counts, row, _, trail = asyncio.run(_run(tmp_path, JOB, silos))
    assert sum(counts) == 0  # no round ran: there is no key
    assert finding in silos[VICTIM].aborted[next(iter(silos[VICTIM].aborted))]
    assert all(not d.aborted and not d.keys for c, d in silos.items() if c != VICTIM)
    assert row["status"] == "FAILED"
    assert row["reason"].startswith(f"key ceremony: {VICTIM} aborted the key ceremony "
                                    "(identity)") and finding in row["reason"]
    (abort,) = [e["payload"] for e in trail if e["kind"] == "he.ceremony.abort"]
    assert abort["client_id"] == VICTIM and finding in abort["message"]
    assert "he.key.created" not in [e["kind"] for e in trail]


async def _statuses(tmp_path) -> dict:
    out: dict = {}
    async with coordinator_grpc(tmp_path / "s.db") as stack:
        stack.jobs.coordinator.he_openings = True
        stub = device_pb2_grpc.DeviceServiceStub(stack.channel)
        two = {**JOB, "clients": {"count": 2, "per_round": 2},
               "crypto": {"mode": "he", "he": {**JOB["crypto"]["he"], "threshold": 2}}}
        job = (await stack.jobs.submit(yaml.safe_dump(two), "enrol")).job_id
        clear = (await stack.jobs.submit(yaml.safe_dump({**JOB, "crypto": {"mode": "none"}}),
                                          "enrol")).job_id
        md = {}
        for cid in ("a", "b", "c"):
            reg = stub.Register(device_pb2.RegisterRequest(job_id=job, device_id=cid,
                                                           enrollment_token="enrol"))
            out[f"register_{cid}"] = await status_of(reg)
            if out[f"register_{cid}"] == grpc.StatusCode.OK:
                md[cid] = (("x-tsfl-device", cid),
                           ("authorization", f"Bearer {(await reg).session_token}"))
        reg = await stub.Register(device_pb2.RegisterRequest(job_id=clear, device_id="a",
                                                             enrollment_token="enrol"))
        clear_md = (("x-tsfl-device", "a"), ("authorization", f"Bearer {reg.session_token}"))

        def step(stage: str, payload: dict | bytes, job_id: str = job, version: int = 0,
                 rpc=stub.HeSetup, metadata: tuple | None = None):
            data = payload if isinstance(payload, bytes) else msgpack.packb(payload)
            return status_of(rpc(device_pb2.HeStepRequest(
                job_id=job_id, model_version=version, stage=stage, payload=data),
                metadata=md["a"] if metadata is None else metadata))

        out["anonymous"] = await step("status", {}, metadata=(("x-tsfl-device", "a"),))
        out["unknown_stage"] = await step("teleport", {})
        out["oversized"] = await step("advertise", b"\x00" * 100_000)
        out["not_msgpack"] = await step("advertise", b"\xc1")
        out["clear_job"] = await step("status", {}, job_id=clear, metadata=clear_md)
        out["stale_model"] = await step("sketch", {}, version=7, rpc=stub.HeOpen)
        for _ in range(600):  # both silos enrolled: the ceremony begins
            if stack.jobs.coordinator.jobs[job].he_ceremony is not None:
                break
            await asyncio.sleep(0.05)
        out["out_of_order"] = await step("confirm", {"id": "a", "k": "0" * 64})
        forged = CeremonyParty(DeviceIdentity.enrol("a", IdentityAuthority.generate()),
                               stack.jobs.coordinator.jobs[job].he_shape[0], job,
                               ["a", "b"], []).advertise()
        out["forged"] = await step("advertise", forged)
        for _ in range(200):  # the ceremony failed, and the job with it
            row = await stack.store.get_job(job)
            if row["status"] != "RUNNING":
                break
            await asyncio.sleep(0.05)
        out["job"] = (row["status"], row["reason"])
        out["after_failure"] = await step("advertise", forged, metadata=md["b"])
        trail = await stack.store.audit_trail(job)
        out["refused"] = [e["payload"] for e in trail if e["kind"] == "he.ceremony.refused"]
    return out


def test_he_steps_answer_precise_statuses(tmp_path):
    s = asyncio.run(_statuses(tmp_path))
    S = grpc.StatusCode
    assert (s["register_a"], s["register_b"], s["register_c"]) == (S.OK, S.OK,
                                                                   S.RESOURCE_EXHAUSTED)
    assert s["anonymous"] == S.UNAUTHENTICATED
    assert s["unknown_stage"] == S.INVALID_ARGUMENT
    assert s["oversized"] == S.RESOURCE_EXHAUSTED
    assert s["not_msgpack"] == S.INVALID_ARGUMENT
    assert s["clear_job"] == S.FAILED_PRECONDITION
    assert s["out_of_order"] == S.FAILED_PRECONDITION
    assert s["forged"] == S.PERMISSION_DENIED  # certified by another authority
    status, reason = s["job"]  # the ceremony, and the job with it, failed with the reason
    assert status == "FAILED" and reason.startswith("key ceremony: a's advertise message was "
                                                    "refused") and "untrusted" in reason
    assert s["after_failure"] == S.NOT_FOUND  # the job is over
    assert s["stale_model"] == S.FAILED_PRECONDITION
    assert [r["code"] for r in s["refused"]] == ["wrong_step", "identity"]


def test_the_cli_names_the_silos_authority(tmp_path):
    """``tsfl job submit --authority CA.pub`` puts it in the spec; ``tsfl devices`` takes
    only an authority the job trusts for its silos."""
    from tsfl.runtime.fleet import threshold_authority
    from tsfl.runtime.he_spec import with_authority

    CA.save(tmp_path / "ca.key")
    spec_yaml = yaml.safe_dump({**JOB, "crypto": {"mode": "he"}})
    submitted = yaml.safe_load(with_authority(spec_yaml, str(tmp_path / "ca.key.pub")))
    assert submitted["crypto"]["he"]["authority"] == [CA.public_key.hex()]
    with pytest.raises(ValueError, match=r"crypto\.mode he"):
        with_authority(yaml.safe_dump({**JOB, "crypto": {"mode": "none"}}), CA.public_key.hex())
    spec = parse_job(submitted)
    assert threshold_authority(spec, str(tmp_path / "ca.key")).public_key == CA.public_key
    IdentityAuthority.generate().save(tmp_path / "other.key")
    with pytest.raises(ValueError, match="not one of the job's identity authorities"):
        threshold_authority(spec, str(tmp_path / "other.key"))
    with pytest.raises(ValueError, match="--authority-key"):
        threshold_authority(spec, None)


async def _absent_silo(tmp_path) -> tuple:
    job = {**JOB, "crypto": {"mode": "he", "he": {**JOB["crypto"]["he"],
                                                  "stage_timeout_s": 1.5}}}
    async with coordinator_grpc(tmp_path / "a.db") as stack:
        stack.jobs.coordinator.he_openings = True
        job_id = (await stack.jobs.submit(yaml.safe_dump(job), "enrol")).job_id
        stub = device_pb2_grpc.DeviceServiceStub(stack.channel)
        await stub.Register(device_pb2.RegisterRequest(  # enrolled, then silent
            job_id=job_id, device_id="client-00003", enrollment_token="enrol"))
        counts = await asyncio.wait_for(run_fleet(
            stack.address, job_id, "enrol", parse_job(job), 3, authority=CA), 60)
        row = await stack.store.get_job(job_id)
        return counts, row["status"], row["reason"]


def test_a_silo_that_never_comes_fails_the_ceremony_and_the_job(tmp_path):
    counts, status, reason = asyncio.run(_absent_silo(tmp_path))
    assert sum(counts) == 0 and status == "FAILED"
    assert reason == ("key ceremony: key ceremony timed out in its advertise step (waiting "
                      "for client-00003)")
