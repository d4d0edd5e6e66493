"""Chunk sequences for large bus values: split, reassemble, refuse what does not fit."""

import os
import struct

from tsfl.bus.chunks import _CHUNK, ChunkAssembler, split


def _feed(asm, pieces, topic="t", partition=0, first=100):
    out = []
    for i, (meta, part) in enumerate(pieces):
        whole = asm.add(topic, partition, first + i, meta, part)
        if whole is not None:
            out.append(bytes(whole))
    return out


def test_split_and_reassemble_in_any_order_with_duplicates():
    value = os.urandom(10_000)
    pieces = list(split(value, 1024))
    assert len(pieces) == 10 and len(pieces[-1][1]) == 10_000 - 9 * 1024
    asm = ChunkAssembler()
    shuffled = pieces[5:] + pieces[:5] + pieces[2:4]
    assert _feed(asm, shuffled) == [value]
    assert _feed(asm, pieces) == []  # a redelivered message is handed out once
    assert asm.held_bytes == 0


def test_commits_stop_at_an_incomplete_message():
    asm = ChunkAssembler()
    pieces = list(split(os.urandom(5000), 1000))
    _feed(asm, pieces[:3], first=40)
    assert asm.pending_offset("t", 0) == 40
    assert asm.pending_offset("t", 1) is None
    assert asm.held_bytes == 5000  # one preallocated buffer, not a growing list


def _forged(msg_id=b"x" * 16, index=0, count=2, total=2000, digest=0, chunk=1000):
    return _CHUNK.pack(msg_id, index, count, total, digest, chunk)


def test_implausible_or_inconsistent_chunks_are_dropped():
    asm = ChunkAssembler(max_message_bytes=1 << 20)
    assert asm.add("t", 0, 1, b"short", b"") is None
    assert asm.add("t", 0, 1, _forged(total=2 << 20, count=2049, chunk=1024), b"a") is None
    assert asm.add("t", 0, 1, _forged(count=5), b"a" * 1000) is None  # count ≠ total/chunk
    assert asm.add("t", 0, 1, _forged(index=2), b"a" * 1000) is None
    assert asm.held_bytes == 0
    assert asm.add("t", 0, 1, _forged(), b"a" * 999) is None  # wrong size for its index
    assert asm.add("t", 0, 2, _forged(index=1, total=3000), b"a" * 1000) is None
    assert asm.add("t", 0, 3, _forged(), b"a" * 1000) is None
    assert asm.add("t", 0, 4, _forged(index=1), b"a" * 1000) is None  # bad checksum
    assert asm.held_bytes == 0


def test_incomplete_messages_time_out():
    asm = ChunkAssembler(timeout_s=0.0)
    pieces = list(split(os.urandom(3000), 1000))
    _feed(asm, pieces[:2])
    asm.expire()
    assert asm.pending_offset("t", 0) is None


def test_header_layout_is_stable():
    assert _CHUNK.size == struct.calcsize("<16sIIQQI") == 44
