"""The client SDK: what devices and silos embed to take part in federated jobs."""

from tsfl.sdk.client import NumPyClient, TorchClient
from tsfl.sdk.privacy_guard import DevicePrivacy, PrivacyFloor, TaskRefused
from tsfl.sdk.runner import ClientRunner, RoundTask, Transport, UploadReceipt

__all__ = [
    "ClientResult",
    "ClientRunner",
    "DevicePrivacy",
    "GrpcTransport",
    "NumPyClient",
    "PrivacyFloor",
    "RoundTask",
    "TLSConfig",
    "TaskRefused",
    "TorchClient",
    "Transport",
    "UploadReceipt",
    "run_client",
    "start_client",
]


def __getattr__(name: str) -> object:  # the gRPC side loads on first use
    if name in ("start_client", "run_client", "ClientResult"):
        from tsfl.sdk import grpc_client

        return getattr(grpc_client, name)
    if name in ("GrpcTransport", "TLSConfig"):
        from tsfl.sdk import grpc_transport

        return getattr(grpc_transport, name)
    raise AttributeError(name)
