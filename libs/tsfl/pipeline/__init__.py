"""The server-side round pipeline, as bus roles that know nothing of the transport.

``coordinator`` owns round state and talks to devices; ``aggregator`` decodes,
validates and folds updates, then applies the strategy. The embedded runtime runs
them in one process over a :class:`~tsfl.bus.memory.MemoryBus`; the distributed
deployment wraps the same classes in services over Kafka.
"""
