"""The selector role: ``tsfl.rounds`` (OPEN) → ``tsfl.cohorts``.

Chooses each round's cohort from the job's registered devices (the device registry in
the store, ordered by id, so both deployments draw the same cohort for the same seed).
"""

from __future__ import annotations

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record
from tsfl.pipeline import events
from tsfl.pipeline.role import BusRole
from tsfl.pipeline.selection import UniformSelector
from tsfl.storage.store import Store


class Selector(BusRole):
    name = "selector"

    def __init__(self, bus: Bus, store: Store, *, group_id: str = "selector"):
        super().__init__(bus, store, [topics.ROUNDS], group_id)

    async def handle(self, record: Record) -> None:
        event = events.parse_round_event(record.value)
        if event["type"] == events.OPEN:
            await self._select(event)
        await self.consumer.commit(record)

    async def _select(self, event: dict) -> None:
        job_id, number = event["job"], event["round"]
        k, minimum, seed = int(event["k"]), int(event["min"]), int(event["seed"])
        available = await self.store.list_device_ids(job_id)
        if len(available) < minimum:
            msg = events.cohort_message(job_id, number, [], reason=(
                f"only {len(available)} registered device(s), the round needs {minimum}"))
        else:
            cohort = UniformSelector(seed).select(number, available, min(k, len(available)))
            msg = events.cohort_message(job_id, number, cohort)
        await self.bus.publish(topics.COHORTS, msg, key=job_id.encode())
