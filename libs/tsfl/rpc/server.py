"""The coordinator's gRPC server: DeviceService (:mod:`tsfl.rpc.device_service`),
AdminService (:mod:`tsfl.rpc.admin_service`), the vertical jobs' party relay
(:mod:`tsfl.rpc.vertical_service`) and the health service, on one port."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import grpc
from grpc_health.v1 import health
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from tsfl.pipeline.coordinator import Coordinator
from tsfl.rpc.admin_service import AdminServicer
from tsfl.rpc.common import MAX_UNARY_BYTES, SERVER_OPTIONS, grpc_options
from tsfl.rpc.device_service import DeviceServicer
from tsfl.rpc.guard import RefusalLog
from tsfl.rpc.health import COORDINATOR_HEALTH, health_servicer, set_serving
from tsfl.rpc.vertical_service import add_party_relay
from tsfl.v1 import admin_pb2_grpc, device_pb2_grpc

if TYPE_CHECKING:  # passed in by the runtime, which sits above rpc
    from tsfl.runtime.jobs import JobManager


class CoordinatorServer(NamedTuple):
    """A started coordinator server. Stop it with :meth:`stop`, which also writes the
    refusal counts its rate-limited audit still holds."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    refusals: RefusalLog

    async def stop(self, grace: float | None) -> None:
        await self.server.stop(grace)
        await self.refusals.flush()  # a burst that ended just before is still counted


async def start_coordinator_server(coordinator: Coordinator, jobs: JobManager, address: str,
                                   *, credentials: grpc.ServerCredentials | None = None
                                   ) -> CoordinatorServer:
    # every device and admin call is a server span (a no-op until a tracer provider is
    # installed: tsfl.runtime.observability), continuing a caller's W3C trace context
    server = grpc.aio.server(interceptors=[aio_server_interceptor()],
                             options=[*grpc_options(MAX_UNARY_BYTES), *SERVER_OPTIONS])
    devices = DeviceServicer(coordinator, jobs, max_update_bytes=coordinator.max_update_bytes)
    device_pb2_grpc.add_DeviceServiceServicer_to_server(devices, server)
    add_party_relay(server, devices.gate, jobs.vertical)  # vertical jobs' parties, same auth
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(coordinator, jobs), server)
    hs = health_servicer(server)
    port = (server.add_secure_port(address, credentials) if credentials
            else server.add_insecure_port(address))
    await server.start()
    await set_serving(hs, True, COORDINATOR_HEALTH)
    return CoordinatorServer(server, port, hs, devices.gate.refusals)
