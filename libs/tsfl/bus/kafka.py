"""The Kafka bus (aiokafka): the distributed deployment's implementation of :class:`Bus`.

* Topics are created explicitly with their partition counts (never auto-created).
* Producers wait for ``acks=all``; idempotent/transactional producers are not used, so
  delivery is at-least-once and every consumer is idempotent by key.
* Offsets are committed manually, only after a record's effect is persisted.
* Values larger than ``chunk_bytes`` travel as a sequence of chunk records with the same
  key (hence the same partition, in order), reassembled by the consumer: duplicates are
  dropped, incomplete messages time out, and a commit never passes the first chunk of a
  message still being assembled.
* Headers carry the schema version and the W3C trace context.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from tsfl.bus.base import Bus, BusError, Consumer, Record, latest_per_partition
from tsfl.bus.chunks import CHUNK_HEADER, ChunkAssembler, split
from tsfl.telemetry import inject_trace_headers
from tsfl.wire.envelope import WIRE_VERSION

log = logging.getLogger("tsfl.bus.kafka")

SCHEMA_HEADER = "tsfl-schema"


class KafkaBus(Bus):
    def __init__(self, bootstrap: str, *, chunk_bytes: int = 4 * 1024**2,
                 client_id: str = "tsfl", request_timeout_ms: int = 60_000,
                 fetch_max_wait_ms: int = 10):
        if chunk_bytes < 1024:
            raise ValueError("chunk_bytes must be at least 1 KiB")
        self.bootstrap = bootstrap
        self.chunk_bytes = chunk_bytes
        self.client_id = client_id
        self.request_timeout_ms = request_timeout_ms
        # How long the broker may hold an empty fetch. Kafka's 500 ms default would add up
        # to half a second to every hop of a round; control messages need milliseconds.
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self._producer: AIOKafkaProducer | None = None

    @property
    def max_request_bytes(self) -> int:
        return self.chunk_bytes + 1024**2

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, client_id=self.client_id, acks="all",
            enable_idempotence=False, max_request_size=self.max_request_bytes,
            request_timeout_ms=self.request_timeout_ms, linger_ms=0)
        try:
            await self._producer.start()
        except KafkaError as exc:
            self._producer = None
            raise BusError(f"cannot reach Kafka at {self.bootstrap}: {exc}") from exc

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def create_topics(self, topics: dict[str, int]) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=self.client_id)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            new = [NewTopic(name, partitions, 1) for name, partitions in topics.items()
                   if name not in existing]
            if new:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(new)
        finally:
            await admin.close()

    async def publish(self, topic: str, value: bytes, key: bytes | None = None,
                      headers: Sequence[tuple[str, bytes]] = ()) -> None:
        await (await self.publish_nowait(topic, value, key, headers))

    async def publish_nowait(self, topic: str, value: bytes, key: bytes | None = None,
                             headers: Sequence[tuple[str, bytes]] = ()) -> asyncio.Future[None]:
        if self._producer is None:
            raise BusError("bus is not started")
        hdrs = [(SCHEMA_HEADER, str(WIRE_VERSION).encode()), *inject_trace_headers(),
                *headers]
        view = memoryview(value)
        if len(view) <= self.chunk_bytes:
            return await self._producer.send(topic, bytes(view), key=key, headers=hdrs)
        # Chunked: same key -> same partition -> in order. Send all, then wait for all.
        futures = []
        for meta, part in split(view, self.chunk_bytes):
            futures.append(await self._producer.send(
                topic, part, key=key or meta[:16], headers=[*hdrs, (CHUNK_HEADER, meta)]))
        return asyncio.ensure_future(asyncio.gather(*futures))

    def consumer(self, topics: Sequence[str], group_id: str) -> KafkaConsumer:
        return KafkaConsumer(self, tuple(topics), group_id)


class KafkaConsumer(Consumer):
    def __init__(self, bus: KafkaBus, topics: tuple[str, ...], group_id: str,
                 assembly_timeout_s: float = 300.0):
        self.bus = bus
        self.topics = topics
        self.group_id = group_id
        self.assembly_timeout_s = assembly_timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        self.assembler = ChunkAssembler(assembly_timeout_s)

    async def start(self) -> None:
        fetch = self.bus.max_request_bytes
        self._consumer = AIOKafkaConsumer(
            *self.topics, bootstrap_servers=self.bus.bootstrap, group_id=self.group_id,
            client_id=f"{self.bus.client_id}-{self.group_id}", enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_bytes=fetch * 4,
            max_partition_fetch_bytes=fetch, check_crcs=True,
            fetch_max_wait_ms=self.bus.fetch_max_wait_ms)
        try:
            await self._consumer.start()
        except KafkaError as exc:
            self._consumer = None
            raise BusError(f"cannot reach Kafka at {self.bus.bootstrap}: {exc}") from exc

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def getone(self, timeout: float | None = None) -> Record | None:
        if self._consumer is None:
            raise BusError("consumer is not started")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                msg = await asyncio.wait_for(self._consumer.getone(), remaining)
            except TimeoutError:
                return None
            headers = tuple((k, bytes(v)) for k, v in (msg.headers or ()))
            chunk = next((v for k, v in headers if k == CHUNK_HEADER), None)
            record = Record(msg.topic, msg.partition, msg.offset, msg.key,
                            msg.value if msg.value is not None else b"",
                            tuple(h for h in headers if h[0] != CHUNK_HEADER))
            if chunk is None:
                return record
            whole = self.assembler.add(record.topic, record.partition, record.offset, chunk,
                                       record.value)
            if whole is not None:
                return Record(record.topic, record.partition, record.offset, record.key,
                              whole, record.headers)

    async def commit(self, record: Record) -> None:
        await self.commit_all((record,))

    async def commit_all(self, records: Iterable[Record]) -> None:
        if self._consumer is None:
            raise BusError("consumer is not started")
        assigned = self._consumer.assignment()
        offsets = {}
        for (topic, partition), record in latest_per_partition(records).items():
            tp = TopicPartition(topic, partition)
            if tp not in assigned:
                continue  # partition moved to another member after a rebalance: theirs now
            offset = record.offset + 1
            pending = self.assembler.pending_offset(topic, partition)
            offsets[tp] = offset if pending is None else min(offset, pending)
        if offsets:
            await self._consumer.commit(offsets)
