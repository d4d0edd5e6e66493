"""The bundled crypto examples through the six services (issue #17): examples/digits-he.yaml
with threshold keying (its 10 silos hold the key ceremony through the coordinator and open
each model, t = 6) and examples/digits-secagg.yaml with SecAgg+ against an active server
(100 devices, signed advertisements, derived (k, t), the consistency round). Each is the
example as shipped but for its round count (and, for HE, the identity authority a
deployment names); the result equals the embedded run."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import yaml
from stack_helpers import job_info, submit

from tsfl.config import bundled_example
from tsfl.runtime.embedded import run_embedded
from tsfl.runtime.fleet import run_fleet
from tsfl.storage import Store

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

ROUNDS = 2


def _example(name: str) -> dict:
    job = yaml.safe_load(bundled_example(name).read_text())
    return {**job, "rounds": ROUNDS}


async def _checkpoint(database: str, job_id: str) -> tuple[dict, list, list]:
    store = await Store.open(database)
    try:
        return (await store.latest_checkpoint(job_id), await store.list_rounds(job_id),
                await store.list_participants(job_id))
    finally:
        await store.close()


def _embedded(job: dict, tmp_path) -> np.ndarray:
    from tsfl.config import parse_job

    return asyncio.run(run_embedded(parse_job(job), tmp_path / "embedded")).final_vector


def _counted_once(rounds: list, parts: list, per_round: int) -> None:
    assert [r["state"] for r in rounds] == ["PUBLISHED"] * ROUNDS
    keys = [(p["round"], p["client_id"]) for p in parts if p["status"] == "accepted"]
    assert len(keys) == len(set(keys)) == ROUNDS * per_round


def test_digits_he_runs_through_the_services_with_threshold_keying(services, database,
                                                                   tmp_path):
    from tsfl.config import parse_job
    from tsfl.core.layout import ParamLayout
    from tsfl.he import HeJob
    from tsfl.identity import IdentityAuthority
    from tsfl.wire.messages import encode_model

    ca = IdentityAuthority.generate()  # its private key stays with the silos' operator
    job = _example("digits-he")
    job["crypto"]["he"]["authority"] = [ca.public_key.hex()]
    assert job["crypto"]["he"]["keying"] == "threshold"
    job_id = submit(services[0].grpc, job)
    silos: dict = {}
    contributed = asyncio.run(asyncio.wait_for(run_fleet(
        services[0].grpc, job_id, "enrol-me", parse_job(job), job["clients"]["count"],
        authority=ca, silos=silos), 300))
    assert sum(contributed) == ROUNDS * 10
    info = job_info(services[0].grpc, job_id)
    assert info.status == "COMPLETED", info.reason
    ckpt, rounds, parts = asyncio.run(_checkpoint(database, job_id))
    _counted_once(rounds, parts, 10)
    spec = parse_job(yaml.safe_load(info.spec_yaml))
    layout = ParamLayout.from_json(json.loads(info.layout_json))
    he = HeJob.from_spec(spec, layout)
    assert he is not None and spec.crypto.he.keying == "threshold"
    final = ckpt["vector"]
    assert not final[he.selected].any()  # the store holds zeros and the encrypted sum
    assert {s.key_id for d in silos.values() for s in d.keys.values()} == {he.key_id}
    model = encode_model(job_id, ckpt["version"], final, layout, sealed=ckpt["sealed"])
    embedded = _embedded(job, tmp_path)
    for device in silos.values():  # every silo opened the final model with the others
        view = device.open_model(model, final, *device.job(he.task_config(), layout))
        assert np.max(np.abs(view - embedded)) <= 1e-5


def test_digits_secagg_runs_through_the_services_against_an_active_server(
        services, database, tmp_path):
    from tsfl.config import parse_job

    job = _example("digits-secagg")
    # the example's 1 s stage timeout suits devices that answer a stage in parallel (or
    # the embedded run); this fleet's 100 devices share one event loop on 2 cores and
    # answer one after another (~20 ms each for the share stage's 100 signature checks):
    # with 1 s, fewer than (1 − δ)n shared in time and every device refused the round
    # ("0 masked inputs, 90 needed") — the protocol's own abort, nothing released
    job["crypto"]["secagg"]["stage_timeout_s"] = 30.0
    count = job["clients"]["count"]
    job_id = submit(services[0].grpc, job)
    contributed = asyncio.run(asyncio.wait_for(run_fleet(
        services[0].grpc, job_id, "enrol-me", parse_job(job), count), 300))
    assert sum(contributed) == ROUNDS * count
    info = job_info(services[0].grpc, job_id)
    assert info.status == "COMPLETED", info.reason
    ckpt, rounds, parts = asyncio.run(_checkpoint(database, job_id))
    _counted_once(rounds, parts, count)
    # a deployment's devices do not drop out on purpose: the embedded run without the
    # simulated dropouts is the same job
    embedded = _embedded({**job, "simulation": {"dropout": 0.0}}, tmp_path)
    assert np.max(np.abs(ckpt["vector"] - embedded)) <= 1e-5

