"""The gRPC health service every TrustStram service answers (Kubernetes probes it): one
servicer, SERVING or NOT_SERVING per service name, and a blocking check for ``tsfl stack
status`` and tests. No coordinator imports here — the five stage services use it without
loading the coordinator or torch."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

#: the names the coordinator's health service answers for
COORDINATOR_HEALTH = ("", "tsfl.v1.DeviceService", "tsfl.v1.AdminService")


def health_servicer(server: grpc.aio.Server) -> health.aio.HealthServicer:
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


async def set_serving(servicer: health.aio.HealthServicer, serving: bool,
                      services: tuple[str, ...] = ("",)) -> None:
    status = (health_pb2.HealthCheckResponse.SERVING if serving
              else health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in services:
        await servicer.set(name, status)


def check(address: str, service: str = "", timeout: float = 2.0) -> str:
    """``serving``, ``not serving`` or ``unreachable``."""
    try:
        with grpc.insecure_channel(address) as channel:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError:
        return "unreachable"
    return ("serving" if resp.status == health_pb2.HealthCheckResponse.SERVING
            else "not serving")
