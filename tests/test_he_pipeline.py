"""HE jobs through the pipeline: same model as in the clear, nothing decryptable on the
server side, bad encrypted uploads refused with precise codes."""

from __future__ import annotations

import asyncio

import msgpack
import numpy as np
import pytest

from tsfl.config import ConfigError, parse_job
from tsfl.core.layout import ParamLayout
from tsfl.core.update import Update
from tsfl.he import HeJob, SealedVector, SecretKeySet
from tsfl.he.job import he_params
from tsfl.pipeline.roles import LocalPipeline
from tsfl.runtime.embedded import run_embedded
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


@pytest.mark.parametrize("he", [{}, {"fraction": 0.1}, {"layers": ["1.weight"]}])
def test_he_run_equals_the_clear_run(tmp_path, he):
    clear = _run(SMALL, tmp_path, "clear")
    sealed = _run({**SMALL, "crypto": {"mode": "he", "he": he}}, tmp_path, "he")
    assert sealed.status == "COMPLETED" and len(sealed.metrics) == 3
    assert np.abs(sealed.final_vector - clear.final_vector).max() < 1e-5
    c = sealed.crypto
    assert c is not None and c["mode"] == "he"
    assert c["encrypted_bytes_up"] > 0 and c["parameters"]["security_bits"] == 128
    total = c["encrypted_coordinates"] + c["clear_coordinates"]
    # 2 polynomials × ⌈bits/8⌉ bytes per N reals, over 4 bytes; tiny models pad the last
    # ciphertext (tests/test_he.py checks ≤ 4× on a large vector)
    p, k = c["parameters"], c["encrypted_coordinates"]
    padded = -(-k // p["poly_degree"]) * p["poly_degree"]
    ideal = 2 * ((p["coeff_modulus_bits"][0] + 7) // 8) / 4
    assert ideal <= 4.0
    assert c["expansion"] == pytest.approx(ideal * padded / k, rel=0.02)
    if he.get("fraction"):
        assert c["encrypted_coordinates"] == int(np.ceil(0.1 * total))
    elif not he:
        assert c["clear_coordinates"] == 0


def test_server_side_holds_zeros_and_ciphertexts_only(tmp_path):
    result = _run({**SMALL, "crypto": {"mode": "he", "he": {"fraction": 0.2}}}, tmp_path, "he")
    keys = SecretKeySet.from_bytes((tmp_path / "he" / "keys" / "secret.key").read_bytes())

    async def inspect():
        store = await Store.open(f"sqlite:///{result.database}")
        try:
            ckpt = await store.latest_checkpoint(result.job_id)
            row = await store.get_job(result.job_id)
        finally:
            await store.close()
        return ckpt, row

    ckpt, row = asyncio.run(inspect())
    assert row["spec"]["crypto"]["he"]["key_id"] == keys.key_id
    from tsfl.runtime.simulation import build_federation
    layout = build_federation(result.spec).workspace.layout
    job = HeJob.from_spec(result.spec, layout)
    assert job is not None
    # the server's copy of the model: zeros where encrypted, the true values elsewhere
    assert not ckpt["vector"][job.selected].any()
    np.testing.assert_array_equal(ckpt["vector"][job.clear], result.final_vector[job.clear])
    # the encrypted sum decrypts (with the devices' key) to the model's hidden values
    total = SealedVector.from_bytes(ckpt["sealed"], job.public, int(job.selected.size))
    from tsfl.he import open_vector
    hidden = open_vector(keys, total) / total.weight
    np.testing.assert_allclose(hidden, result.final_vector[job.selected], atol=1e-5)
    # no secret key material anywhere in the server's database
    db = result.database.read_bytes()
    for start in range(0, len(keys.secret_key) - 32, 997):
        assert keys.secret_key[start:start + 32] not in db


# -- refusals at the coordinator ---------------------------------------------------------------
LAYOUT = ParamLayout([("w", (6,), "float32"), ("b", (2,), "float32")])
JOB = "he-job"


async def _he_pipeline(tmp_path, keys: SecretKeySet):
    spec = parse_job({"name": "p", "clients": {"count": 2, "per_round": 2},
                      "crypto": {"mode": "he", "he": {"layers": ["w"], "key_id": keys.key_id}}})
    assert he_params(spec, LAYOUT) == keys.params
    store = await Store.open(f"sqlite:///{tmp_path / 'p.db'}")
    pipeline = await LocalPipeline.in_memory(store)
    await pipeline.coordinator.submit_job(JOB, spec, LAYOUT, np.ones(8, np.float32))
    for c in ("c0", "c1"):
        await pipeline.coordinator.register_device(JOB, c, "t")
    return store, pipeline, HeJob.from_spec(spec, LAYOUT)


def _he_update(keys, job, client, theta_w, n=50, delta_b=0.5, key_override=None):
    device = HeDevice([keys])
    glob = np.ones(8, np.float32)
    delta = np.concatenate([np.full(6, theta_w - 1, np.float32),
                            np.full(2, delta_b, np.float32)])
    clear, sealed = device.seal_update(keys, job, glob, delta, n)
    if key_override is not None:
        raw = msgpack.unpackb(sealed)
        raw.update(key_override)
        sealed = msgpack.packb(raw)
    return encode_update(Update(JOB, 1, client, 0, n, clear, {}), LAYOUT, None, sealed)


async def test_he_round_and_refusals(tmp_path):
    keys = SecretKeySet(he_params(parse_job({
        "name": "p", "clients": {"count": 2, "per_round": 2},
        "crypto": {"mode": "he", "he": {"layers": ["w"]}}}), LAYOUT))
    store, pipeline, job = await _he_pipeline(tmp_path, keys)
    coord = pipeline.coordinator
    try:
        await coord.open_round(JOB)
        task = await coord.get_task("c0", JOB)
        assert task is not None and task.config["he"]["key_id"] == keys.key_id
        plain = encode_update(Update(JOB, 1, "c0", 0, 5, np.zeros(8, np.float32), {}), LAYOUT)
        stranger = SecretKeySet(keys.params)
        wrong_key = _he_update(stranger, HeJob.build(stranger.public, LAYOUT, 100.0,
                                                     {"layers": ["w"]}), "c0", 2.0)
        good = _he_update(keys, job, "c0", 2.0)
        head, payload = unpack_frame(good, "update")
        tampered_payload = bytearray(payload)
        tampered_payload[-3:] = b"\xff\xff\xff"  # a coefficient ≥ q
        tampered = pack_frame("update", {k: v for k, v in head.items()
                                         if k not in ("payload_len", "xxh3", "kind", "v")},
                              bytes(tampered_payload))
        for data, code in [(plain, "he"), (wrong_key, "he_key"), (tampered, "sealed")]:
            receipt = await coord.upload("c0", data)
            assert (receipt.accepted, receipt.code) == (False, code), receipt
        assert (await coord.upload("c0", good)).accepted
        assert (await coord.upload("c1", _he_update(keys, job, "c1", 4.0, n=150,
                                                    delta_b=1.5))).accepted
        result = await asyncio.wait_for(coord.wait_round(JOB), 10)
        assert result.ok and sorted(result.accepted) == ["c0", "c1"]
        model = coord.jobs[JOB].model_bytes
        server_view = coord.model_vector(JOB)
        assert not server_view[:6].any()  # the server never had these values
        np.testing.assert_allclose(server_view[6:], 1 + (50 * 0.5 + 150 * 1.5) / 200,
                                   rtol=1e-6)
        opened = HeDevice.open_model(model, server_view, keys, job)
        np.testing.assert_allclose(opened[:6], (50 * 2.0 + 150 * 4.0) / 200, atol=1e-6)
        refused = [e["payload"]["code"] for e in await store.audit_trail(JOB)
                   if e["kind"] == "upload.refused"]
        assert refused == ["he", "he_key", "sealed"]
        # what the he service and the coordinator hold of the job: public parts only
        for role in ("he", "coordinator", "privacy"):
            held = pipeline.roles[role].jobs[JOB].he
            assert set(vars(held)) == {"public", "selected", "clear", "weight_unit",
                                       "selection"}
            assert set(vars(held.public)) == {"key_id", "params", "prime"}
    finally:
        await pipeline.stop()
        await store.close()


@pytest.mark.parametrize("extra, match", [
    ({"strategy": {"name": "fedadam"}}, "server optimizer"),
    ({"strategy": {"name": "fedavg", "server_lr": 0.5}}, "server_lr"),
    ({"compression": {"downlink": "delta"}}, "downlink"),
    ({"privacy": {"mode": "central", "noise_multiplier": 1.0, "clip_norm": 1.0}},
     "clip on the device"),
    ({"crypto": {"mode": "he", "he": {"precision": 1e-12, "value_bound": 1e9}}},
     "one CKKS prime"),
    ({"crypto": {"mode": "he", "he": {"poly_degree": 2048, "security": 256}}}, "security"),
])
def test_conflicting_he_jobs_are_refused_with_the_reason(extra, match):
    spec = {**SMALL, "crypto": {"mode": "he"}, **extra}
    with pytest.raises(ConfigError, match=match):
        parse_job(spec)
