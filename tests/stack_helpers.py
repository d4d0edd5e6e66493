"""Talk to a running stack as an operator (the stack's token from TSFL_ADMIN_TOKEN) and run
its fleet of devices: shared by the distributed, observability and fault tests."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import numpy as np
import yaml

from tsfl.config import parse_job
from tsfl.v1 import admin_pb2, admin_pb2_grpc


def submit(address: str, job: dict, token: str = "enrol-me") -> str:
    with grpc.insecure_channel(address) as ch:
        info = admin_pb2_grpc.AdminServiceStub(ch).SubmitJob(admin_pb2.SubmitJobRequest(
            spec_yaml=yaml.safe_dump(job), enrollment_token=token), timeout=120,
            metadata=admin_md())
    return info.job_id


def admin_md() -> tuple:
    return (("authorization", f"Bearer {os.environ['TSFL_ADMIN_TOKEN']}"),)


def job_info(address: str, job_id: str) -> admin_pb2.JobInfo:
    with grpc.insecure_channel(address) as ch:
        return admin_pb2_grpc.AdminServiceStub(ch).GetJob(admin_pb2.JobRef(job_id=job_id),
                                                          timeout=10, metadata=admin_md())


def fleet(address: str, job_id: str, job: dict, token: str = "enrol-me") -> list[int]:
    from tsfl.runtime.fleet import run_fleet

    return asyncio.run(asyncio.wait_for(
        run_fleet(address, job_id, token, parse_job(job), job["clients"]["count"]), 300))


def embedded_final(tmp_path: Path, job: dict) -> np.ndarray:
    """The final model of ``job`` run embedded: the reference a distributed run must equal."""
    from tsfl.runtime.embedded import run_embedded

    return asyncio.run(run_embedded(parse_job(job), tmp_path / "embedded")).final_vector


def check_counted_once(rounds: list, parts: list, job: dict,
                       accepted: int | None = None) -> None:
    """Every round published with ``accepted`` updates (default: its whole cohort), every
    (round, client) accepted once."""
    assert [r["state"] for r in rounds] == ["PUBLISHED"] * job["rounds"]
    per_round = job["clients"]["per_round"] if accepted is None else accepted
    assert [r["accepted"] for r in rounds] == [per_round] * job["rounds"]
    keys = [(p["round"], p["client_id"]) for p in parts if p["status"] == "accepted"]
    assert len(keys) == len(set(keys)) == job["rounds"] * per_round


async def final_model(database: str, job_id: str) -> tuple[np.ndarray, list, list]:
    """The job's latest checkpoint, its rounds and its participants, from the store."""
    from tsfl.storage import Store

    store = await Store.open(database)
    try:
        ckpt = await store.latest_checkpoint(job_id)
        return (ckpt["vector"], await store.list_rounds(job_id),
                await store.list_participants(job_id))
    finally:
        await store.close()
