"""HE jobs through the pipeline, both keyings: same model as in the clear, nothing
decryptable on the server side, forged or bad encrypted uploads refused with precise
codes — at the coordinator and, for bytes injected on the topic, at the he stage — and
threshold sums opened by t silos through the coordinator."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tsfl.bus import topics
from tsfl.config import ConfigError, load_job, parse_job
from tsfl.core.layout import ParamLayout
from tsfl.core.update import Update
from tsfl.he import HeJob, SealedVector, SecretKeySet
from tsfl.he.job import he_params, threshold_params
from tsfl.he.signing import frame, sign_section, split_frame
from tsfl.he.threshold import CeremonyParty, KeyShare, parse_sum, run_ceremony, scheme
from tsfl.identity import DeviceIdentity, IdentityAuthority
from tsfl.pipeline.coordinator import UploadRefused
from tsfl.pipeline.roles import LocalPipeline
from tsfl.runtime.embedded import run_embedded
from tsfl.runtime.transport import InProcessTransport
from tsfl.sdk.he import HeDevice
from tsfl.storage import Store
from tsfl.wire import encode_update
from tsfl.wire.envelope import pack_frame, unpack_frame

SMALL = {
    "name": "he-small", "seed": 3, "rounds": 3,
    "clients": {"count": 10, "per_round": 5},
    "model": {"kind": "mlp", "hidden": [16]},
    "training": {"lr": 0.05, "epochs": 1, "batch_size": 16},
}


def _run(spec_dict, tmp_path, name):
    spec = parse_job(spec_dict)
    return asyncio.run(run_embedded(spec, tmp_path / name))


@pytest.fixture(scope="module")
def clear_run(tmp_path_factory):
    return _run(SMALL, tmp_path_factory.mktemp("clear"), "clear")


@pytest.mark.parametrize("keying, he", [("threshold", {}), ("threshold", {"fraction": 0.1}),
                                        ("shared", {}), ("shared", {"layers": ["1.weight"]})])
def test_he_run_equals_the_clear_run(tmp_path, clear_run, keying, he):
    sealed = _run({**SMALL, "crypto": {"mode": "he", "he": {**he, "keying": keying}}},
                  tmp_path, "he")
    assert sealed.status == "COMPLETED" and len(sealed.metrics) == 3
    assert np.abs(sealed.final_vector - clear_run.final_vector).max() < 1e-5
    c = sealed.crypto
    assert c is not None and c["mode"] == "he" and c["parameters"]["keying"] == keying
    assert c["encrypted_bytes_up"] > 0 and c["parameters"]["security_bits"] == 128
    total = c["encrypted_coordinates"] + c["clear_coordinates"]
    # 2 polynomials per N reals, over 4 bytes; tiny models pad the last ciphertext
    # (tests/he/test_he.py and test_he_threshold.py check ≤ 4× on large vectors)
    p, k = c["parameters"], c["encrypted_coordinates"]
    padded = -(-k // p["poly_degree"]) * p["poly_degree"]
    per_coeff = (30 * len(p["coeff_modulus_bits"]) / 8 if keying == "threshold"
                 else (p["coeff_modulus_bits"][0] + 7) // 8)
    ideal = 2 * per_coeff / 4
    assert ideal <= 4.0
    # the signature and certificate add ~400 bytes a section
    assert c["expansion"] == pytest.approx(ideal * padded / k, rel=0.03)
    if he.get("fraction"):
        assert c["encrypted_coordinates"] == int(np.ceil(0.1 * total))
    elif not he:
        assert c["clear_coordinates"] == 0


def test_threshold_run_with_dropped_silos_equals_the_clear_run(tmp_path):
    """40% of each cohort vanish before uploading and sit out the opening too: t of the
    silos online open each sum."""
    spec = {**SMALL, "simulation": {"dropout": 0.4}}
    clear = _run(spec, tmp_path, "clear")
    sealed = _run({**spec, "crypto": {"mode": "he"}}, tmp_path, "he")
    assert sealed.status == "COMPLETED"
    assert sum(m["dropped"] for m in sealed.metrics) == 3 * 2
    assert np.abs(sealed.final_vector - clear.final_vector).max() < 1e-5


def test_the_digits_he_example_runs_with_threshold_keying(tmp_path):
    spec = load_job("examples/digits-he.yaml").model_copy(update={"rounds": 2})
    assert spec.crypto.he.keying == "threshold"
    result = asyncio.run(run_embedded(spec, tmp_path / "digits-he"))
    assert result.status == "COMPLETED"
    c = result.crypto
    assert c["parameters"]["threshold"] == 6 and c["parameters"]["silos"] == 10
    clear = spec.model_copy(update={"crypto": spec.crypto.model_copy(update={"mode": "none"})})
    plain = asyncio.run(run_embedded(clear, tmp_path / "clear"))
    assert np.abs(result.final_vector - plain.final_vector).max() < 1e-5
    assert result.metrics[-1]["test_accuracy"] == pytest.approx(
        plain.metrics[-1]["test_accuracy"], abs=0.01)


@pytest.mark.parametrize("keying", ["threshold", "shared"])
def test_server_side_holds_zeros_and_ciphertexts_only(tmp_path, keying):
    result = _run({**SMALL, "crypto": {"mode": "he", "he": {"fraction": 0.2,
                                                            "keying": keying}}},
                  tmp_path, "he")

    async def inspect():
        store = await Store.open(f"sqlite:///{result.database}")
        try:
            ckpt = await store.latest_checkpoint(result.job_id)
            row = await store.get_job(result.job_id)
            audit = await store.audit_trail(result.job_id)
        finally:
            await store.close()
        return ckpt, row, audit

    ckpt, row, audit = asyncio.run(inspect())
    from tsfl.runtime.simulation import build_federation
    layout = build_federation(result.spec).workspace.layout
    job = HeJob.from_spec(result.spec, layout)
    assert job is not None and row["spec"]["crypto"]["he"]["key_id"] == job.key_id
    # the server's copy of the model: zeros where encrypted, the true values elsewhere
    assert not ckpt["vector"][job.selected].any()
    np.testing.assert_array_equal(ckpt["vector"][job.clear], result.final_vector[job.clear])
    db = result.database.read_bytes()
    keys_dir = tmp_path / "he" / "keys"
    if keying == "shared":
        keys = SecretKeySet.from_bytes((keys_dir / "secret.key").read_bytes())
        total = SealedVector.from_bytes(ckpt["sealed"], job.public, job.size)
        from tsfl.he import open_vector
        hidden = open_vector(keys, total) / total.weight
        secrets = [keys.secret_key]
    else:  # t silos' shares decrypt the sum; none of them is in the database
        shares = [KeyShare.from_bytes(p.read_bytes()) for p in sorted(keys_dir.glob("*.share"))]
        assert len(shares) == 10 and len({s.key_id for s in shares}) == 1
        params = shares[0].public.params
        view = parse_sum(ckpt["sealed"], job.public, job.size)
        chosen = shares[2:2 + params.threshold]
        lam = scheme.ring_of(params).lagrange_at_zero([s.x for s in chosen])
        parts = [scheme.partial_decrypt(params, s.share, lam[s.x], view.polys[:, 1])
                 for s in chosen]
        hidden = scheme.combine(params, view.polys[:, 0], parts, job.size) / view.weight
        secrets = [s.share.astype("<u4").tobytes() for s in shares] + [
            s.output_key for s in shares]
        assert any(e["kind"] == "he.opening.refused" for e in audit) is False
    np.testing.assert_allclose(hidden, result.final_vector[job.selected], atol=1e-5)
    for secret in secrets:  # no secret key material anywhere in the server's database
        for start in range(0, max(1, len(secret) - 32), 997):
            assert secret[start:start + 32] not in db


# -- refusals at the coordinator and at the he stage --------------------------------------------
LAYOUT = ParamLayout([("w", (6,), "float32"), ("b", (2,), "float32")])
JOB = "he-job"
CLIENTS = ("c0", "c1", "c2")


def _spec(keying: str, key_id: str, ca: IdentityAuthority):
    return parse_job({"name": "p", "clients": {"count": 3, "per_round": 3},
                      "round": {"min_updates": 2, "quorum": 0.6},
                      "crypto": {"mode": "he", "he": {
                          "layers": ["w"], "key_id": key_id, "keying": keying,
                          "threshold": 2, "authority": [ca.public_key.hex()],
                          "stage_timeout_s": 5}}})


def _keys(keying: str, ca: IdentityAuthority, ids: dict[str, DeviceIdentity]):
    """Per device: its key (a share, or the shared key set)."""
    spec = _spec(keying, "x", ca)
    if keying == "shared":
        keys = SecretKeySet(he_params(spec, LAYOUT))
        return dict.fromkeys(CLIENTS, keys)
    shares, _ = run_ceremony([CeremonyParty(ids[c], threshold_params(spec), JOB,
                                            CLIENTS, [ca.public_key]) for c in CLIENTS])
    return {s.device_id: s for s in shares}


async def _he_pipeline(tmp_path, spec):
    store = await Store.open(f"sqlite:///{tmp_path / 'p.db'}")
    pipeline = await LocalPipeline.in_memory(store)
    pipeline.coordinator.he_openings = True
    await pipeline.coordinator.submit_job(JOB, spec, LAYOUT, np.ones(8, np.float32))
    for c in CLIENTS:
        await pipeline.coordinator.register_device(JOB, c, "t")
    return store, pipeline


def _update(device: HeDevice, keys, job, client, theta_w, n=50, delta_b=0.5, number=1):
    glob = np.ones(8, np.float32)
    delta = np.concatenate([np.full(6, theta_w - 1, np.float32),
                            np.full(2, delta_b, np.float32)])
    clear, sealed = device.seal_update(keys, job, glob, delta, n, job_id=JOB,
                                       round_number=number)
    return encode_update(Update(JOB, number, client, 0, n, clear, {}), LAYOUT, None, sealed)


def _with_section(frame_bytes: bytes, section: bytes) -> bytes:
    """The update frame with its encrypted section replaced (a forgery in transit)."""
    head, payload = unpack_frame(frame_bytes, "update")
    cut = len(payload) - head["he"]["sb"]
    head = {k: v for k, v in head.items() if k not in ("payload_len", "xxh3", "kind", "v")}
    head["he"] = {"sb": len(section)}
    return pack_frame("update", head, bytes(payload[:cut]) + section)


def _forgeries(good: bytes, keys, job, stranger_job, rogue: DeviceIdentity,
               ids: dict[str, DeviceIdentity]) -> list[tuple[bytes, str]]:
    head, payload = unpack_frame(good, "update")
    section = bytes(payload[len(payload) - head["he"]["sb"]:])
    shead, spayload = split_frame(section, 4096)
    unsigned = dict(shead)
    del unsigned["sig"]
    tampered = bytearray(section)
    tampered[-1] ^= 1  # one bit of the last coefficient: still a valid residue
    over_q = bytearray(section)
    over_q[-3:] = b"\xff\xff\xff"  # the last coefficient (or residue) ≥ its modulus
    # an honest device's section under another key, relabelled with the job's key id
    other = HeDevice([stranger_job[0]], identity=ids["c0"])
    foreign = _update(other, *stranger_job, "c0", 2.0)
    fhead, fpayload = unpack_frame(foreign, "update")
    fsec = bytes(fpayload[len(fpayload) - fhead["he"]["sb"]:])
    fh, fp = split_frame(fsec, 4096)
    fh["key"] = job.key_id  # the label says this job's key; the signature says another
    unsigned_bytes = frame(unsigned, spayload)
    plain = encode_update(Update(JOB, 1, "c0", 0, 5, np.zeros(8, np.float32), {}), LAYOUT)
    return [(plain, "he"), (_with_section(good, unsigned_bytes), "he_unsigned"),
            (_with_section(good, bytes(tampered)), "he_signature"),
            (_with_section(good, frame(fh, fp)), "he_key"),
            (_with_section(good, sign_section(rogue, unsigned_bytes, JOB, 1)), "he_identity"),
            (_with_section(good, sign_section(ids["c1"], unsigned_bytes, JOB, 1)),
             "he_identity"),
            (_with_section(good, bytes(over_q)), "sealed")]


@pytest.mark.parametrize("keying", ["threshold", "shared"])
async def test_he_round_refusals_and_opening(tmp_path, keying):
    ca = IdentityAuthority.generate()
    ids = {c: DeviceIdentity.enrol(c, ca) for c in CLIENTS}
    keys = _keys(keying, ca, ids)
    spec = _spec(keying, keys["c0"].key_id, ca)
    store, pipeline = await _he_pipeline(tmp_path, spec)
    coord = pipeline.coordinator
    devices = {c: HeDevice([keys[c]], identity=ids[c]) for c in CLIENTS}
    job = HeJob.from_spec(spec, LAYOUT)
    assert job is not None
    stranger = _keys(keying, ca, ids)["c0"]  # the same silos' key of another job
    stranger_job = (stranger, HeDevice([stranger], identity=ids["c0"]).job(
        {**job.task_config(), "key_id": stranger.key_id}, LAYOUT)[1])
    rogue = DeviceIdentity.enrol("c0", IdentityAuthority.generate())
    try:
        await coord.open_round(JOB)
        task = await coord.get_task("c0", JOB)
        assert task is not None and task.config["he"]["key_id"] == job.key_id
        assert task.config["he"]["keying"] == keying
        k0, j0 = devices["c0"].job(task.config["he"], LAYOUT)
        good = _update(devices["c0"], k0, j0, "c0", 2.0)
        forged = _forgeries(good, k0, j0, stranger_job, rogue, ids)
        for data, code in forged:
            receipt = await coord.upload("c0", data)
            assert (receipt.accepted, receipt.code) == (False, code), (code, receipt)
        # the topic: a forgery injected for c1 before its own upload is refused by the he
        # stage, audited, and does not stand for c1's update
        k1, j1 = devices["c1"].job(task.config["he"], LAYOUT)
        other = _update(devices["c1"], k1, j1, "c1", 9.0)
        await pipeline.bus.publish(topics.UPDATES_ENCRYPTED,
                                   _with_section(other, _unsigned_of(other)),
                                   key=b"%s:1:c1" % JOB.encode())
        real1 = _update(devices["c1"], k1, j1, "c1", 4.0, n=150, delta_b=1.5)
        if keying == "threshold":  # commit before reveal: c0 and c1 (c2 is offline)
            receipt = await coord.upload("c0", good)
            assert (receipt.accepted, receipt.code) == (False, "he_commit")
            coord.expect_he_commits(JOB, ["c0", "c1"])
            transport = InProcessTransport(coord)
            await asyncio.gather(*(devices[c].commit_section(transport, c, JOB, 0, 1, keys[c])
                                   for c in ("c0", "c1")))
            forged.append((good, "he_commit"))
        assert (await coord.upload("c0", good)).accepted
        assert (await coord.upload("c1", real1)).accepted
        result = await asyncio.wait_for(coord.wait_round(JOB), 10)
        assert result.ok and sorted(result.accepted) == ["c0", "c1"]
        model = coord.jobs[JOB].model_bytes
        server_view = coord.model_vector(JOB)
        assert not server_view[:6].any()  # the server never had these values
        np.testing.assert_allclose(server_view[6:], 1 + (50 * 0.5 + 150 * 1.5) / 200,
                                   rtol=1e-6)
        if keying == "threshold":  # c0 and c1 open it (c2 is offline), c2 joins later
            transport = InProcessTransport(coord)
            version = coord.jobs[JOB].version
            await asyncio.gather(*(devices[c].open_round(transport, c, JOB, version, model,
                                                         *devices[c].job(task.config["he"],
                                                                         LAYOUT))
                                   for c in ("c0", "c1")))
            late = await devices["c2"].open_model_async(
                transport, "c2", JOB, version, model, server_view,
                *devices["c2"].job(task.config["he"], LAYOUT))
            np.testing.assert_allclose(late[:6], (50 * 2.0 + 150 * 4.0) / 200, atol=1e-6)
        opened = devices["c1"].open_model(model, server_view, keys["c1"], j0)
        np.testing.assert_allclose(opened[:6], (50 * 2.0 + 150 * 4.0) / 200, atol=1e-6)
        trail = await store.audit_trail(JOB)
        refused = [e["payload"]["code"] for e in trail if e["kind"] == "upload.refused"]
        assert refused == [code for _, code in forged]
        at_stage = [e["payload"] for e in trail if e["kind"] == "he.section.refused"]
        assert [(e["client_id"], e["code"]) for e in at_stage] == [("c1", "he_unsigned")]
        # what the he service and the coordinator hold of the job: public parts only
        for role in ("he", "coordinator", "privacy"):
            held = pipeline.roles[role].jobs[JOB].he
            assert set(vars(held)) == {"public", "selected", "clear", "weight_unit",
                                       "selection", "authorities"}
            assert set(vars(held.public)) <= {"key_id", "params", "prime"}
    finally:
        await pipeline.stop()
        await store.close()


def _unsigned_of(update_frame: bytes) -> bytes:
    head, payload = unpack_frame(update_frame, "update")
    section = bytes(payload[len(payload) - head["he"]["sb"]:])
    shead, spayload = split_frame(section, 4096)
    del shead["sig"]
    return frame(shead, spayload)


async def test_threshold_keying_needs_devices_that_open_sums(tmp_path):
    """A coordinator whose devices cannot carry the opening steps refuses threshold jobs
    at submission; one whose devices can (tsfl run's, gRPC's HeSetup/HeOpen) takes one
    without a key — its silos make it before round 1 — but not without the identity
    authority that certifies them."""
    ca = IdentityAuthority.generate()
    store = await Store.open(f"sqlite:///{tmp_path / 'd.db'}")
    pipeline = await LocalPipeline.in_memory(store)
    coord = pipeline.coordinator
    try:
        with pytest.raises(ValueError, match="keying 'shared'"):
            await coord.submit_job(JOB, _spec("threshold", "k" * 64, ca), LAYOUT,
                                   np.ones(8, np.float32))
        coord.he_openings = True
        keyless = _spec("threshold", None, ca)
        anonymous = keyless.model_copy(update={"crypto": keyless.crypto.model_copy(update={
            "he": keyless.crypto.he.model_copy(update={"authority": None})})})
        with pytest.raises(ValueError, match="authority is missing"):
            await coord.submit_job(JOB, anonymous, LAYOUT, np.ones(8, np.float32))
        await coord.submit_job(JOB, keyless, LAYOUT, np.ones(8, np.float32))
        assert coord.needs_he_ceremony(JOB) and coord.jobs[JOB].he is None
        with pytest.raises(UploadRefused, match="key ceremony"):
            coord.upload_bound(JOB, "c0")
    finally:
        await pipeline.stop()
        await store.close()


@pytest.mark.parametrize("extra, match", [
    ({"strategy": {"name": "fedadam"}}, "server optimizer"),
    ({"strategy": {"name": "fedavg", "server_lr": 0.5}}, "server_lr"),
    ({"compression": {"downlink": "delta"}}, "downlink"),
    ({"privacy": {"mode": "central", "noise_multiplier": 1.0, "clip_norm": 1.0}},
     "clip on the device"),
    ({"crypto": {"mode": "he", "he": {"precision": 1e-12, "value_bound": 1e9,
                                      "keying": "shared"}}}, "one CKKS prime"),
    ({"crypto": {"mode": "he", "he": {"poly_degree": 2048, "security": 256,
                                      "keying": "shared"}}}, "security"),
    ({"crypto": {"mode": "he", "he": {"poly_degree": 2048}}}, "security"),
    ({"crypto": {"mode": "he", "he": {"threshold": 11}}}, "exceeds the 10 silos"),
    ({"clients": {"count": 100, "per_round": 10}, "crypto": {"mode": "he"}},
     "keying: shared"),
])
def test_conflicting_he_jobs_are_refused_with_the_reason(extra, match):
    spec = {**SMALL, "crypto": {"mode": "he"}, **extra}
    with pytest.raises(ConfigError, match=match):
        parse_job(spec)
