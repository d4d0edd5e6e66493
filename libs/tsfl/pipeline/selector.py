"""The selector role: ``tsfl.rounds`` (OPEN) + ``tsfl.devices`` → ``tsfl.cohorts``.

Chooses each round's cohort from the job's registered devices, ordered by id, so both
deployments draw the same cohort for the same seed. The registry is kept in memory from
``tsfl.devices`` events and loaded from the store when a job is first seen (so a
restarted selector knows every device enrolled before it started).
"""

from __future__ import annotations

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record
from tsfl.pipeline import events
from tsfl.pipeline.role import BusRole
from tsfl.pipeline.selection import UniformSelector
from tsfl.storage.store import Store
from tsfl.wire.envelope import unpack


class Selector(BusRole):
    name = "selector"

    def __init__(self, bus: Bus, store: Store, *, group_id: str = "selector"):
        super().__init__(bus, store, [topics.ROUNDS, topics.DEVICES], group_id)
        self.registry: dict[str, set[str]] = {}  # job -> device ids

    async def handle(self, record: Record) -> None:
        if record.topic == topics.DEVICES:
            event = unpack(record.value, events.DEVICE_EVENT, max_bytes=1 << 20)
            devices = self.registry.get(str(event["job"]))
            if devices is not None:
                devices.add(str(event["device"]))
        else:
            event = events.parse_round_event(record.value)
            if event["type"] == events.OPEN:
                await self._select(event)
            elif event["type"] == events.JOB_FINISHED:
                self.registry.pop(event["job"], None)
        await self.consumer.commit(record)

    async def _devices(self, job_id: str) -> list[str]:
        devices = self.registry.get(job_id)
        if devices is None:
            devices = self.registry[job_id] = set(await self.store.list_device_ids(job_id))
        return sorted(devices)

    async def _select(self, event: dict) -> None:
        job_id, number = event["job"], event["round"]
        k, minimum, seed = int(event["k"]), int(event["min"]), int(event["seed"])
        available = await self._devices(job_id)
        if len(available) < minimum:
            msg = events.cohort_message(job_id, number, [], reason=(
                f"only {len(available)} registered device(s), the round needs {minimum}"))
        else:
            selector = UniformSelector(seed)
            rate = event.get("poisson_rate")
            if rate is not None:  # DP accounting assumes exactly this sampling
                cohort = selector.poisson(number, available, float(rate))
            else:
                cohort = selector.select(number, available, min(k, len(available)))
            msg = events.cohort_message(job_id, number, cohort, reason=(
                None if cohort else "Poisson sampling drew no client this round"))
        await self.bus.publish(topics.COHORTS, msg, key=job_id.encode())
