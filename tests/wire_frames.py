"""Take a TSF1 frame apart and put it back together with changed header fields: how the
wire tests forge frames."""

import struct

import msgpack


def split(data: bytes):
    magic, head_len = struct.unpack_from("<4sI", data)
    assert magic == b"TSF1"
    head = msgpack.unpackb(data[8:8 + head_len], raw=False)
    return head, data[-(-(8 + head_len) // 64) * 64:]


def join(head: dict, payload: bytes) -> bytes:
    blob = msgpack.packb(head, use_bin_type=True)
    pad = -(-(8 + len(blob)) // 64) * 64 - 8 - len(blob)
    return struct.pack("<4sI", b"TSF1", len(blob)) + blob + bytes(pad) + payload


def mutate(data: bytes, payload: bytes | None = None, **fields) -> bytes:
    head, body = split(data)
    head.update(fields)
    return join(head, body if payload is None else payload)
