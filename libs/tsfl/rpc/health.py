"""A blocking gRPC health check, for ``tsfl stack status`` and tests."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


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
