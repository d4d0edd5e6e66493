"""The privacy role: ``tsfl.updates.raw`` → ``tsfl.updates.clipped`` and
``tsfl.aggregates`` → ``tsfl.models``.

Until differential privacy lands (clipping, noise, the ledger), updates pass through
unchanged and each successful aggregate is released as the round's model.
"""

from __future__ import annotations

from tsfl.bus import topics
from tsfl.bus.base import Bus, Record
from tsfl.pipeline import events
from tsfl.pipeline.role import BusRole
from tsfl.storage.store import Store
from tsfl.wire.envelope import pack_frame


class Privacy(BusRole):
    name = "privacy"

    def __init__(self, bus: Bus, store: Store, *, group_id: str = "privacy"):
        super().__init__(bus, store, [topics.UPDATES_RAW, topics.AGGREGATES], group_id)

    async def handle(self, record: Record) -> None:
        if record.topic == topics.UPDATES_RAW:
            published = await self.bus.publish_nowait(topics.UPDATES_CLIPPED, record.value,
                                                       key=record.key, headers=record.headers)
            await self.commit_when_published(record, published)
            return
        head, payload = events.parse_aggregate(record.value)
        if head["ok"]:
            await self.bus.publish(topics.MODELS, release_model(head, payload),
                                   key=head["job"].encode(), headers=record.headers)
        await self.consumer.commit(record)


def release_model(head: dict, payload: memoryview) -> bytes:
    """The ``tsfl.models`` frame for an aggregate: the model plus the round's outcome."""
    return pack_frame("model", {
        "job": head["job"], "version": head["version"], "layout": head["layout"],
        "codecs": ["f32"],
        "extra": {"round": head["round"], "accepted": head["accepted"],
                  "rejected": head["rejected"], "num_examples": head["num_examples"],
                  "train_loss": head["train_loss"]},
    }, payload)
