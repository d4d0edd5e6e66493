"""The message bus: named topics, keys, async publish/subscribe, consumer groups.

:class:`~tsfl.bus.memory.MemoryBus` serves the embedded deployment; the Kafka bus
of the distributed deployment implements the same :class:`~tsfl.bus.base.Bus`.
"""

from tsfl.bus.base import Bus, BusError, BusUnavailable, Consumer, Record
from tsfl.bus.memory import MemoryBus
from tsfl.bus.topics import TOPICS

__all__ = ["TOPICS", "Bus", "BusError", "BusUnavailable", "Consumer", "MemoryBus", "Record"]
