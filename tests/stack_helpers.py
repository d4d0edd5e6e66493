"""Talk to a running stack as an operator (the stack's token from TSFL_ADMIN_TOKEN) and run
its fleet of devices: shared by the distributed, observability and fault tests."""

from __future__ import annotations

import asyncio
import os

import grpc
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
