"""The HE role: ``tsfl.updates.encrypted`` → ``tsfl.aggregates`` (still encrypted).

Its topic and lifecycle are wired; until CKKS aggregation lands no job can choose an
encrypted mode, so a record arriving here is refused (logged and committed).
"""

from __future__ import annotations

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record
from tsfl.pipeline.role import BusRole
from tsfl.storage.store import Store


class HomomorphicAggregator(BusRole):
    name = "he"

    def __init__(self, bus: Bus, store: Store, *, group_id: str = "he"):
        super().__init__(bus, store, [topics.UPDATES_ENCRYPTED], group_id)

    async def handle(self, record: Record) -> None:
        self.log.warning("refusing an encrypted update at %s@%d: no job uses HE",
                         record.topic, record.offset)
        await self.consumer.commit(record)
