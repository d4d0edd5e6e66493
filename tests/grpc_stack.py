"""A coordinator with its gRPC server over the embedded pipeline, for tests that play a
network peer (shared by the admin-auth and device-guard tests)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from tsfl.pipeline.roles import LocalPipeline
from tsfl.rpc.server import start_coordinator_server
from tsfl.runtime.jobs import JobManager
from tsfl.storage import Store


@dataclass
class GrpcStack:
    store: Store
    jobs: JobManager
    channel: grpc.aio.Channel
    address: str = ""


@contextlib.asynccontextmanager
async def coordinator_grpc(db: Path) -> AsyncIterator[GrpcStack]:
    store = await Store.open(f"sqlite:///{db}")
    pipeline = await LocalPipeline.in_memory(store)
    jobs = JobManager(pipeline.coordinator)
    served = await start_coordinator_server(pipeline.coordinator, jobs, "127.0.0.1:0")
    port = served.port
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield GrpcStack(store, jobs, channel, f"127.0.0.1:{port}")
    finally:
        await channel.close()
        await served.stop(None)  # writes the refusal counts it still holds
        await jobs.stop()
        await pipeline.stop()
        await store.close()


async def status_of(coro) -> grpc.StatusCode:
    """The status a call ends with (OK when it returns)."""
    try:
        await coro
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK
