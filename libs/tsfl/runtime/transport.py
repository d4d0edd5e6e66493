"""The in-process transport: simulated devices call the coordinator directly."""

from __future__ import annotations

from typing import Any

import numpy as np
import xxhash

from tsfl.config import NetworkSpec
from tsfl.core.protocol import RoundTask, UploadReceipt
from tsfl.pipeline.coordinator import Coordinator
from tsfl.wire.envelope import WireError
from tsfl.wire.messages import peek_update_meta


class SimulatedLinks:
    """Per-device link speeds (log-normal bandwidth, fixed latency), seeded by device id.

    Transfers are not slowed down; they are *timed* as latency + bytes / bandwidth.
    """

    def __init__(self, spec: NetworkSpec, seed: int):
        self.spec = spec
        self.seed = seed
        self._bandwidth: dict[str, float] = {}

    def bandwidth(self, device: str) -> float:
        """Bytes per second of ``device``'s link."""
        bw = self._bandwidth.get(device)
        if bw is None:
            ident = xxhash.xxh3_64_intdigest(device.encode())
            rng = np.random.default_rng([self.seed, ident, 0x1172])
            mbps = self.spec.bandwidth_mbps * float(np.exp(self.spec.bandwidth_sigma
                                                           * rng.standard_normal()))
            bw = self._bandwidth[device] = mbps * 1e6 / 8
        return bw

    def seconds(self, device: str, nbytes: int) -> float:
        return self.spec.latency_ms / 1e3 + nbytes / self.bandwidth(device)


class InProcessTransport:
    """Implements :class:`tsfl.sdk.runner.Transport` with direct calls (no copies)."""

    def __init__(self, coordinator: Coordinator, links: SimulatedLinks | None = None):
        self.coordinator = coordinator
        self.links = links

    async def get_task(self, client_id: str) -> RoundTask | None:
        return await self.coordinator.get_task(client_id)

    async def download_model(self, job_id: str, version: int,
                             have_version: int | None = None, client_id: str = "") -> bytes:
        data = await self.coordinator.download_model(job_id, version, have_version)
        if self.links is not None and client_id:
            await self.coordinator.record_transfer(job_id, client_id, "down", len(data),
                                                   self.links.seconds(client_id, len(data)))
        return data

    async def secagg(self, client_id: str, job_id: str, round_number: int, stage: str,
                     payload: dict[str, Any]) -> dict[str, Any]:
        return await self.coordinator.secagg(client_id, job_id, round_number, stage, payload)

    async def he_open(self, client_id: str, job_id: str, version: int, stage: str,
                      payload: dict[str, Any]) -> dict[str, Any]:
        return await self.coordinator.he_open(client_id, job_id, version, stage, payload)

    async def he_setup(self, client_id: str, job_id: str, stage: str,
                       payload: dict[str, Any]) -> dict[str, Any]:
        return await self.coordinator.he_setup(client_id, job_id, stage, payload)

    async def decline(self, client_id: str, job_id: str, round_number: int, code: str,
                      message: str) -> None:
        await self.coordinator.decline_task(client_id, job_id, round_number, code, message)

    async def report_evaluation(self, client_id: str, job_id: str, version: int,
                                loss: float, num_examples: int,
                                metrics: dict[str, float]) -> None:
        await self.coordinator.report_evaluation(client_id, job_id, version, loss,
                                                 num_examples, metrics)

    async def upload(self, client_id: str, data: bytes) -> UploadReceipt:
        if self.links is not None:
            try:
                job_id = peek_update_meta(data)["job_id"]
            except WireError:
                job_id = None
            if job_id is not None:
                await self.coordinator.record_transfer(
                    job_id, client_id, "up", len(data), self.links.seconds(client_id, len(data)))
        return await self.coordinator.upload(client_id, data)
