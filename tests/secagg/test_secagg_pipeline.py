"""SecAgg+ jobs through the pipeline: exact sums with dropouts at every stage, a clean
abort below the threshold, nothing secret in the database or on the bus, no device's
example count or metric on the server, devices that stop and say why."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from tsfl.config import ConfigError, load_job, parse_job
from tsfl.core.layout import ParamLayout
from tsfl.pipeline.roles import LocalPipeline
from tsfl.runtime.dropout import Vanished, Vanishing
from tsfl.runtime.embedded import run_embedded
from tsfl.runtime.secagg_setup import secagg_devices
from tsfl.runtime.transport import InProcessTransport
from tsfl.sdk.secagg import round_config, secure_upload
from tsfl.secagg.ring import dequantize_sum, quantize
from tsfl.secagg.round import SecAggAbort
from tsfl.storage import Store

LAYOUT = ParamLayout([("w", (300,), "float32"), ("b", (7,), "float32")])
JOB = "sa-job"
N = 12


class Recording:
    """A transport that keeps every secagg payload a device sends (to look for later)."""

    def __init__(self, inner):
        self.inner = inner
        self.sent: list[bytes] = []
        self.masked_keys: set[str] = set()

    async def decline(self, *args):
        await self.inner.decline(*args)

    async def secagg(self, client_id, job_id, round_number, stage, payload):
        if stage == "masked":
            self.masked_keys |= set(payload)
        for v in payload.values():
            if isinstance(v, bytes) and v:
                self.sent.append(v)
            elif isinstance(v, dict):
                self.sent += [b for b in v.values() if isinstance(b, bytes) and b]
        return await self.inner.secagg(client_id, job_id, round_number, stage, payload)


async def _pipeline(tmp_path, **secagg):
    spec = parse_job({"name": "sa", "clients": {"count": N, "per_round": N},
                      "round": {"deadline_s": 60},
                      "crypto": {"mode": "secagg",
                                 "secagg": {"stage_timeout_s": 0.3, "dropout": 0.33,
                                            **secagg}}})
    store = await Store.open(f"sqlite:///{tmp_path / 'sa.db'}")
    pipeline = await LocalPipeline.in_memory(store)
    coord = pipeline.coordinator
    await coord.submit_job(JOB, spec, LAYOUT, np.zeros(LAYOUT.total_size, np.float32))
    for i in range(N):
        await coord.register_device(JOB, f"d{i:02d}", "t")
    return spec, store, pipeline


async def _round(coord, transport, vanish: dict[str, str], rng, devices=None):
    await coord.open_round(JOB)
    deltas, examples, losses, tasks = {}, {}, {}, {}
    for i in range(N):
        cid = f"d{i:02d}"
        tasks[cid] = await coord.get_task(cid, JOB)
        deltas[cid] = rng.normal(0, 0.05, LAYOUT.total_size).astype(np.float32)
        examples[cid] = int(rng.integers(20, 200))
        losses[cid] = float(rng.uniform(0.1, 3.0))
    devices = devices or secagg_devices(coord.jobs[JOB].spec, sorted(tasks))

    async def device(cid):
        t = Vanishing(transport, vanish[cid]) if cid in vanish else transport
        with contextlib.suppress(Vanished, SecAggAbort):
            await secure_upload(t, cid, JOB, 1, tasks[cid].config["secagg"], deltas[cid],
                                examples[cid], {"train_loss": losses[cid]},
                                tasks[cid].config["seed"], devices[cid])

    await asyncio.gather(*(device(c) for c in sorted(tasks)))
    result = await asyncio.wait_for(coord.wait_round(JOB), 30)
    return tasks, deltas, (examples, losses), result


async def test_exact_sum_with_dropouts_at_every_stage(tmp_path, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    _spec, store, pipeline = await _pipeline(tmp_path)
    coord = pipeline.coordinator
    recording = Recording(InProcessTransport(coord))
    vanish = {"d01": "advertise", "d04": "share", "d07": "masked", "d10": "unmask"}
    try:
        tasks, deltas, (examples, losses), result = await _round(
            coord, recording, vanish, np.random.default_rng(0))
        assert result.ok, result.reason
        # masked inputs from everyone but those gone before or at "masked"
        survivors = sorted(c for c in tasks if vanish.get(c) not in
                           ("advertise", "share", "masked"))
        assert sorted(result.accepted) == survivors and "d10" in survivors
        assert sorted(result.dropped) == ["d01", "d04", "d07"]
        # the server's sum is exactly the sum of the survivors' ring codes
        config, _, unit = round_config(tasks["d00"].config["secagg"], JOB, 1)
        codes = [quantize(deltas[c].astype(np.float64) * (examples[c] / unit), config.ring,
                          np.random.default_rng([tasks[c].config["seed"], 0x5EC]))
                 for c in survivors]
        total = np.sum(codes, axis=0, dtype=np.uint64)
        weight = sum(examples[c] for c in survivors) / unit
        expected = (dequantize_sum(total, len(survivors), config.ring).astype(np.float64)
                    / weight).astype(np.float32)
        np.testing.assert_array_equal(coord.model_vector(JOB), expected)
        # and it is the weighted mean of the survivors' updates, up to quantization
        plain = sum(deltas[c].astype(np.float64) * examples[c] for c in survivors)
        plain /= sum(examples[c] for c in survivors)
        step = 2 * config.ring.clip / config.ring.levels
        assert np.abs(expected - plain).max() <= len(survivors) * step / weight
        # n and the metrics reached the server only as sums (inside the masked vector)
        assert recording.masked_keys == {"y"}
        assert result.num_examples == sum(examples[c] for c in survivors)
        loss = sum(losses[c] * examples[c] for c in survivors) / result.num_examples
        assert abs(result.train_loss - loss) <= 2 ** -15
        parts = await store.list_participants(JOB, 1)
        assert {p["num_examples"] for p in parts if p["status"] != "selected"} <= {0, None}
        assert all(not p.get("metrics") for p in parts)
        # nothing a device sent (public keys, sealed shares) is in the logs or the database
        logged = "\n".join(r.getMessage() for r in caplog.records)
        for blob in recording.sent:
            assert blob.hex()[:32] not in logged and repr(blob)[:40] not in logged
        await store.close()
        db = (tmp_path / "sa.db").read_bytes()
        for blob in recording.sent:
            assert blob[:24] not in db
        store = await Store.open(f"sqlite:///{tmp_path / 'sa.db'}")
    finally:
        await pipeline.stop()
        await store.close()


class OverTheWire:
    """Every stage message encoded and decoded as the gRPC transport and servicer do."""

    def __init__(self, inner, coord):
        self.inner, self.coord = inner, coord

    async def decline(self, *args):
        await self.inner.decline(*args)

    async def secagg(self, client_id, job_id, round_number, stage, payload):
        from tsfl.wire.secagg import decode_reply, decode_request, encode_reply, encode_request

        config = self.coord.jobs[job_id].round.secagg.config
        data = encode_request(stage, payload, config.ring.ring_bits)
        got = decode_request(stage, data, config.size, config.ring.ring_bits, 1 << 30)
        reply = await self.inner.secagg(client_id, job_id, round_number, stage, got)
        return decode_reply(stage, encode_reply(stage, reply))


@pytest.mark.parametrize("agreement", ["x25519", "x25519+mlkem768"])
async def test_the_wire_format_carries_every_stage(tmp_path, agreement):
    _spec, store, pipeline = await _pipeline(tmp_path, key_agreement=agreement)
    coord = pipeline.coordinator
    try:
        tasks, _, (examples, _), result = await _round(
            coord, OverTheWire(InProcessTransport(coord), coord), {"d03": "masked"},
            np.random.default_rng(3))
        assert result.ok, result.reason
        assert sorted(result.accepted) == sorted(c for c in tasks if c != "d03")
        assert result.num_examples == sum(v for c, v in examples.items() if c != "d03")
    finally:
        await pipeline.stop()
        await store.close()


async def test_below_threshold_the_round_aborts_and_releases_nothing(tmp_path):
    _spec, store, pipeline = await _pipeline(tmp_path)
    coord = pipeline.coordinator
    # 9 of 12 vanish before masking: no neighbourhood keeps its threshold of shares
    vanish = {f"d{i:02d}": "masked" for i in range(9)}
    try:
        _, _, _, result = await _round(coord, InProcessTransport(coord), vanish,
                                       np.random.default_rng(1))
        assert not result.ok and "secagg aborted" in result.reason
        assert coord.jobs[JOB].version == 0  # no partial model
        assert not coord.model_vector(JOB).any()
        assert (await store.get_round(JOB, 1))["state"] == "FAILED"
    finally:
        await pipeline.stop()
        await store.close()


async def test_devices_that_cannot_authenticate_a_key_stop_and_say_why(tmp_path):
    """One advertisement comes with a certificate from an authority the devices do not
    trust (a server that substitutes keys would need one): every device stops before
    sealing anything, reports the precise reason, and the round fails."""
    from tsfl.identity import IdentityAuthority

    _spec, store, pipeline = await _pipeline(tmp_path)
    coord = pipeline.coordinator
    spec = coord.jobs[JOB].spec
    ids = [f"d{i:02d}" for i in range(N)]
    devices = secagg_devices(spec, ids)
    devices["d05"] = secagg_devices(spec, ["d05"], IdentityAuthority.generate())["d05"]
    try:
        _, _, _, result = await _round(coord, InProcessTransport(coord), {},
                                       np.random.default_rng(2), devices)
        assert not result.ok and "secagg aborted" in result.reason
        aborts = [e["payload"] for e in await store.audit_trail(JOB)
                  if e["kind"] == "secagg.device_abort"]
        assert {a["client_id"] for a in aborts} == set(ids)
        assert all(a["code"] == "secagg_advertisement" for a in aborts)
        assert all("untrusted authority" in a["message"] for a in aborts)
    finally:
        await pipeline.stop()
        await store.close()


async def test_plain_uploads_and_out_of_stage_messages_are_refused(tmp_path):
    from tsfl.core.update import Update
    from tsfl.pipeline.secagg_stages import SecAggRefused
    from tsfl.wire import encode_update

    _spec, store, pipeline = await _pipeline(tmp_path)
    coord = pipeline.coordinator
    try:
        await coord.open_round(JOB)
        plain = encode_update(Update(JOB, 1, "d00", 0, 5,
                                     np.zeros(LAYOUT.total_size, np.float32), {}), LAYOUT)
        receipt = await coord.upload("d00", plain)
        assert (receipt.accepted, receipt.code) == (False, "secagg")
        with pytest.raises(SecAggRefused) as wrong:
            await coord.secagg("d00", JOB, 1, "masked", {})
        assert wrong.value.code == "wrong_stage"
        with pytest.raises(SecAggRefused) as bad:
            await coord.secagg("d00", JOB, 1, "advertise", {"c": b"x", "s": b"y"})
        assert bad.value.code == "malformed"
        with pytest.raises(SecAggRefused) as stranger:
            await coord.secagg("nobody", JOB, 1, "advertise", {"c": b"x" * 32, "s": b"y" * 32})
        assert stranger.value.code == "not_selected"
        codes = [e["payload"]["code"] for e in await store.audit_trail(JOB)
                 if e["kind"] == "upload.refused"]
        assert codes == ["secagg", "wrong_stage", "malformed", "not_selected"]
    finally:
        await pipeline.stop()
        await store.close()


def test_embedded_secagg_run_follows_the_clear_run(tmp_path):
    base = {"name": "sa-e", "seed": 2, "rounds": 3, "clients": {"count": 12, "per_round": 12},
            "model": {"kind": "mlp", "hidden": [16]},
            "training": {"lr": 0.05, "epochs": 1, "batch_size": 16}}
    clear = asyncio.run(run_embedded(parse_job(base), tmp_path / "clear"))
    sa = asyncio.run(run_embedded(parse_job({**base, "crypto": {"mode": "secagg"}}),
                                  tmp_path / "sa"))
    assert sa.status == "COMPLETED"
    assert [m["clients"] for m in sa.metrics] == [12, 12, 12]
    assert np.abs(sa.final_vector - clear.final_vector).max() < 1e-3
    dropped = asyncio.run(run_embedded(parse_job({
        **base, "crypto": {"mode": "secagg", "secagg": {"stage_timeout_s": 0.5,
                                                        "dropout": 0.25}},
        "simulation": {"dropout": 0.25}}), tmp_path / "drop"))
    assert dropped.status == "COMPLETED"
    assert all(m["dropped"] >= 1 and m["clients"] >= 9 for m in dropped.metrics)


def test_the_digits_secagg_example_runs_with_the_active_server_protocol(tmp_path):
    """examples/digits-secagg.yaml as shipped (2 of its rounds): signed rounds with the
    derived (k, t) = (26, 16) at n = 100, its simulated 10% dropouts survived."""
    spec = load_job("examples/digits-secagg.yaml").model_copy(update={"rounds": 2})
    result = asyncio.run(run_embedded(spec, tmp_path / "digits-secagg"))
    assert result.status == "COMPLETED"
    p = result.crypto["parameters"]
    assert "active-server" in p["protocol"] and (p["neighbours"], p["threshold"]) == (26, 16)
    assert result.crypto["failed_rounds"] == 0 and result.crypto["dropped"] >= 1
    assert all(m["clients"] + m["dropped"] == 100 and m["clients"] >= 90
               for m in result.metrics)

def test_secagg_conflicts_are_refused():
    with pytest.raises(ConfigError, match="per_round"):
        parse_job({"name": "x", "crypto": {"mode": "secagg"},
                   "clients": {"count": 5, "per_round": 2}})
    with pytest.raises(ConfigError, match="compress"):
        parse_job({"name": "x", "crypto": {"mode": "secagg"},
                   "compression": {"uplink": {"chain": ["topk", "q8"]}}})
    with pytest.raises(ConfigError, match="robust"):
        parse_job({"name": "x", "crypto": {"mode": "secagg"},
                   "robust": {"aggregator": "krum", "num_malicious": 1}})
