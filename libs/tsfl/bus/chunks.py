"""Large values as chunk sequences: split on publish, reassembled (bounded) on consume.

Each chunk carries a header ``message id | index | count | total | xxh3 | chunk size``.
The assembler preallocates the declared total once and writes chunks in place, so a
message of N bytes costs N bytes plus the chunk in hand; it drops duplicates, refuses
chunks whose sizes disagree with their header, checks the checksum of the whole, and
forgets messages that stay incomplete past a timeout.
"""

from __future__ import annotations

import logging
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import xxhash

log = logging.getLogger("tsfl.bus.chunks")

CHUNK_HEADER = "tsfl-chunk"
_CHUNK = struct.Struct("<16sIIQQI")  # id, index, count, total length, xxh3 of whole, chunk size
DEFAULT_MAX_MESSAGE_BYTES = 2 * 1024**3 + 1024**2


def split(value: bytes | bytearray | memoryview, chunk_bytes: int
          ) -> Iterator[tuple[bytes, bytes]]:
    """(chunk header, chunk) pairs of ``value``."""
    view = memoryview(value)
    msg_id = uuid.uuid4().bytes
    count = -(-len(view) // chunk_bytes)
    digest = xxhash.xxh3_64_intdigest(view)
    for index in range(count):
        part = bytes(view[index * chunk_bytes:(index + 1) * chunk_bytes])
        yield _CHUNK.pack(msg_id, index, count, len(view), digest, chunk_bytes), part


@dataclass
class _Assembly:
    first_offset: int
    count: int
    total: int
    digest: int
    chunk: int
    started: float
    buf: bytearray
    seen: set[int] = field(default_factory=set)


class ChunkAssembler:
    """Reassembles the chunk sequences of one consumer, per (topic, partition, message)."""

    def __init__(self, timeout_s: float = 300.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self._open: dict[tuple[str, int, bytes], _Assembly] = {}
        self._done: set[tuple[str, int, bytes]] = set()

    def add(self, topic: str, partition: int, offset: int, meta: bytes,
            part: bytes | bytearray
            ) -> bytearray | None:
        """The whole value once its last chunk arrives, else None."""
        try:
            msg_id, index, count, total, digest, chunk = _CHUNK.unpack(meta)
        except struct.error:
            log.warning("dropping a chunk with a malformed header at %s@%d:%d", topic,
                        partition, offset)
            return None
        key = (topic, partition, msg_id)
        if key in self._done:
            return None  # a redelivered chunk of a message already handed out
        self.expire()
        asm = self._open.get(key)
        if asm is None:
            if not (0 < total <= self.max_message_bytes and chunk > 0
                    and count == -(-total // chunk) and index < count):
                log.warning("dropping an implausible chunk at %s@%d:%d (total %d, chunk %d, "
                            "count %d)", topic, partition, offset, total, chunk, count)
                return None
            asm = self._open[key] = _Assembly(offset, count, total, digest, chunk,
                                              time.monotonic(), bytearray(total))
        if (index >= asm.count or (count, total, digest, chunk) !=
                (asm.count, asm.total, asm.digest, asm.chunk)):
            log.warning("dropping a chunk that disagrees with its message at %s@%d:%d",
                        topic, partition, offset)
            return None
        if index in asm.seen:
            return None  # duplicate chunk
        start = index * asm.chunk
        if len(part) != min(asm.chunk, asm.total - start):
            log.warning("dropping a chunk of the wrong size at %s@%d:%d", topic, partition,
                        offset)
            return None
        asm.buf[start:start + len(part)] = part
        asm.seen.add(index)
        if len(asm.seen) < asm.count:
            return None
        del self._open[key]
        if xxhash.xxh3_64_intdigest(asm.buf) != asm.digest:
            log.warning("dropping a reassembled message that fails its checksum at %s@%d",
                        topic, offset)
            return None
        self._done.add(key)
        if len(self._done) > 100_000:
            self._done.clear()
        return asm.buf

    def pending_offset(self, topic: str, partition: int) -> int | None:
        """The first offset of a message still being assembled (commits stop there)."""
        offsets = [a.first_offset for (t, p, _), a in self._open.items()
                   if t == topic and p == partition]
        return min(offsets) if offsets else None

    @property
    def held_bytes(self) -> int:
        return sum(a.total for a in self._open.values())

    def expire(self) -> None:
        now = time.monotonic()
        for key, asm in list(self._open.items()):
            if now - asm.started > self.timeout_s:
                log.warning("chunked message at %s@%d timed out with %d/%d chunks", key[0],
                            asm.first_offset, len(asm.seen), asm.count)
                del self._open[key]
