"""The in-process transport: simulated devices call the coordinator directly."""

from __future__ import annotations

from tsfl.pipeline.coordinator import Coordinator
from tsfl.sdk.runner import RoundTask, UploadReceipt


class InProcessTransport:
    """Implements :class:`tsfl.sdk.runner.Transport` with direct calls (no copies)."""

    def __init__(self, coordinator: Coordinator):
        self.coordinator = coordinator

    async def get_task(self, client_id: str) -> RoundTask | None:
        return await self.coordinator.get_task(client_id)

    async def download_model(self, job_id: str, version: int) -> bytes:
        return await self.coordinator.download_model(job_id, version)

    async def upload(self, client_id: str, data: bytes) -> UploadReceipt:
        return await self.coordinator.upload(client_id, data)
