"""The Byzantine-detection role: ``tsfl.updates.clipped`` → ``tsfl.verdicts``.

Decisions travel as small messages (a weight in [0, 1], scores, a reason); the payload
stays on its topic. Until robust aggregation lands every update is accepted with
weight 1.
"""

from __future__ import annotations

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record
from tsfl.pipeline import events
from tsfl.pipeline.role import BusRole
from tsfl.storage.store import Store
from tsfl.wire.envelope import WireError
from tsfl.wire.messages import peek_update_meta


class Byzantine(BusRole):
    name = "byzantine"

    def __init__(self, bus: Bus, store: Store, *, group_id: str = "byzantine"):
        super().__init__(bus, store, [topics.UPDATES_CLIPPED], group_id)

    async def handle(self, record: Record) -> None:
        try:
            meta = peek_update_meta(record.value)
        except WireError:
            await self.consumer.commit(record)  # the aggregator refuses it and says why
            return
        verdict = events.verdict_message(meta["job_id"], meta["round"], meta["client_id"],
                                         weight=1.0, reason="accepted: no robust filter")
        published = await self.bus.publish_nowait(topics.VERDICTS, verdict, key=events.update_key(
            meta["job_id"], meta["round"], meta["client_id"]))
        await self.commit_when_published(record, published)
