"""A finished job's final model, served to its devices from the store.

The coordinator keeps only running jobs in memory; a device that asks for the model after
its job ended (``start_client``'s result, ``tsfl.sdk``'s final model) gets the last released
checkpoint, encoded once and kept in an LRU bounded in bytes (a fleet downloads it
together; one job's load never blocks another's download). An HE
job's model exists on the server only encrypted (its silos open each release together
while the job runs), so it is not served here.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from tsfl.core.layout import ParamLayout
from tsfl.wire.messages import LATEST_MODEL as LATEST
from tsfl.wire.messages import encode_model

#: bytes of encoded final models kept in memory (the newest one always is)
CACHE_BYTES = 1 << 30


class ReleasedModels:
    """Encoded final models of finished jobs, read through ``store``."""

    def __init__(self, store: Any, capacity_bytes: int = CACHE_BYTES):
        self.store = store
        self.capacity_bytes = capacity_bytes
        self._cache: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._loading: dict[str, asyncio.Lock] = {}  # one load per job at a time

    async def final(self, job_id: str, version: int) -> tuple[int, bytes]:
        """(version, frame) of ``job_id``'s last released model; ``version`` must be it
        or :data:`LATEST`. LookupError for an unknown, running or HE job or another
        version."""
        cached = self._cache.get(job_id)
        if cached is None:
            lock = self._loading.setdefault(job_id, asyncio.Lock())
            try:
                async with lock:  # the fleet's other downloads wait for this one load
                    cached = self._cache.get(job_id) or await self._load(job_id)
            finally:
                if not lock.locked():
                    self._loading.pop(job_id, None)
            self._keep(job_id, cached)
        else:
            self._cache.move_to_end(job_id)
        if version not in (LATEST, cached[0]):
            raise LookupError(f"model v{version} of {job_id} is not served (the job ended "
                              f"at v{cached[0]})")
        return cached

    def _keep(self, job_id: str, entry: tuple[int, bytes]) -> None:
        self._cache[job_id] = entry
        self._cache.move_to_end(job_id)
        held = sum(len(frame) for _, frame in self._cache.values())
        while held > self.capacity_bytes and len(self._cache) > 1:
            _, (_, frame) = self._cache.popitem(last=False)
            held -= len(frame)

    async def _load(self, job_id: str) -> tuple[int, bytes]:
        row = await self.store.get_job(job_id)
        if row is None or row.get("status") in (None, "RUNNING"):
            raise LookupError(f"unknown job {job_id!r}")
        if ((row.get("spec") or {}).get("crypto") or {}).get("mode") == "he":
            raise LookupError(f"{job_id} is an HE job: its model exists on the server only "
                              "encrypted, and its silos hold it")
        checkpoint = await self.store.latest_checkpoint(job_id)
        if checkpoint is None:
            raise LookupError(f"{job_id} released no model")
        layout = ParamLayout.from_json(row["layout"])
        frame = await asyncio.to_thread(encode_model, job_id, int(checkpoint["version"]),
                                        checkpoint["vector"], layout)
        return int(checkpoint["version"]), frame
