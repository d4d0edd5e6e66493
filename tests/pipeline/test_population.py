"""A dynamic device population: a cross-device job starts with the devices it has
(``clients.min_enrolled``) and samples each later round from everyone enrolled by then."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from grpc_stack import coordinator_grpc

from tsfl.config import ConfigError, parse_job
from tsfl.runtime.simulation import build_federation
from tsfl.sdk.grpc_client import run_client

SPEC = {"name": "grow", "seed": 3, "rounds": 12, "model": {"kind": "logreg"},
        "clients": {"count": 6, "per_round": 3, "min_enrolled": 3},
        "training": {"lr": 0.1, "epochs": 1, "batch_size": 16}, "round": {"deadline_s": 30}}



def test_round_one_starts_at_min_enrolled_and_later_devices_join(tmp_path):
    spec = SPEC
    fed = build_federation(parse_job(spec))
    first, late = fed.client_ids[:3], fed.client_ids[3:]

    async def scenario():
        async with coordinator_grpc(tmp_path / "grow.db") as stack:
            job = (await stack.jobs.submit(yaml.safe_dump(spec), "enrol")).job_id

            def device(cid):
                return run_client(stack.address, fed.clients[cid], job_id=job,
                                  device_id=cid, token="enrol", layout=fed.workspace.layout,
                                  offload=False)

            early = [asyncio.ensure_future(device(cid)) for cid in first]
            for _ in range(300):  # round 1 runs on the first three alone (12 rounds leave
                # the newcomers time to enrol before the last ones, however fast rounds run)
                if [r for r in await stack.store.list_rounds(job) if r["state"] == "PUBLISHED"]:
                    break
                await asyncio.sleep(0.1)
            joined = [asyncio.ensure_future(device(cid)) for cid in late]
            await asyncio.wait_for(asyncio.gather(*early, *joined), 120)
            return [p for p in await stack.store.list_participants(job)
                    if p["status"] == "accepted"]

    accepted = asyncio.run(scenario())
    assert {p["client_id"] for p in accepted if p["round"] == 1} <= set(first)
    assert {p["client_id"] for p in accepted} & set(late)  # later rounds drew newcomers
    assert len(accepted) == 12 * 3


def test_min_enrolled_is_bounded():
    with pytest.raises(ConfigError, match="min_enrolled"):
        parse_job({**SPEC, "clients": {"count": 4, "per_round": 3, "min_enrolled": 2}})
    with pytest.raises(ConfigError, match="min_enrolled"):
        parse_job({**SPEC, "clients": {"count": 4, "per_round": 3, "min_enrolled": 5}})
