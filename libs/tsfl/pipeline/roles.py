"""All the pipeline's roles, by service name, and a helper that runs them in one process."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from tsfl.bus import TOPICS
from tsfl.bus.base import Bus
from tsfl.bus.memory import MemoryBus
from tsfl.pipeline.aggregator import Aggregator
from tsfl.pipeline.aggregator_replicas import PartitionedAggregator
from tsfl.pipeline.byzantine_replicas import ReplicatedByzantine
from tsfl.pipeline.coordinator import Coordinator
from tsfl.pipeline.he import HomomorphicAggregator
from tsfl.pipeline.privacy import Privacy
from tsfl.pipeline.role import BusRole
from tsfl.pipeline.selector import Selector
from tsfl.storage.store import Store

#: each role's constructor, by service name (every role takes the bus and the store)
ROLES: dict[str, Callable[[Bus, Store], BusRole]] = {
    "coordinator": Coordinator,
    "selector": Selector,
    "privacy": Privacy,
    "byzantine": ReplicatedByzantine,
    "aggregator": PartitionedAggregator,
    "he": HomomorphicAggregator,
}


class LocalPipeline:
    """Every role over one bus and store: the embedded deployment's server side."""

    def __init__(self, bus: Bus, store: Store):
        self.bus = bus
        self.roles: dict[str, BusRole] = {name: cls(bus, store) for name, cls in ROLES.items()}
        self._owns_bus = False

    @classmethod
    async def in_memory(cls, store: Store) -> LocalPipeline:
        """A started pipeline on its own MemoryBus with every topic (the embedded server
        side); :meth:`stop` stops the bus too."""
        bus = MemoryBus()
        await bus.start()
        await bus.create_topics(TOPICS)
        pipeline = cls(bus, store)
        pipeline._owns_bus = True
        await pipeline.start()
        return pipeline

    @property
    def coordinator(self) -> Coordinator:
        role = self.roles["coordinator"]
        assert isinstance(role, Coordinator)
        return role

    @property
    def aggregator(self) -> Aggregator:
        role = self.roles["aggregator"]
        assert isinstance(role, Aggregator)
        return role

    async def start(self) -> None:
        # downstream first, so nothing a role publishes waits for a consumer to join
        for name in reversed(list(self.roles)):
            await self.roles[name].start()

    async def stop(self) -> None:
        for role in self.roles.values():
            await role.stop()
        if self._owns_bus:
            await self.bus.stop()

    async def __aenter__(self) -> LocalPipeline:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
