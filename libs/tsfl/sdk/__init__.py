"""The client SDK: what devices and silos embed to take part in federated jobs."""

from tsfl.sdk.client import NumPyClient, TorchClient
from tsfl.sdk.runner import ClientRunner, RoundTask, Transport, UploadReceipt

__all__ = ["ClientRunner", "NumPyClient", "RoundTask", "TorchClient", "Transport",
           "UploadReceipt"]
