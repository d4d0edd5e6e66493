"""The messages of split training: a batch of cut-layer activations (feature party →
label party) and the gradients with respect to them (label party → feature party).

Layout: a fixed header — magic ``TSVF``, version, kind, party index, a 16-byte session,
epoch, batch, rows, columns — then rows × columns little-endian float32. A decoder is told
what it expects (session, party, epoch, batch, shape) and refuses anything else before it
reads the payload: a wrong length, a shape other than the batch's, a replayed or
out-of-order batch, non-finite or out-of-range values.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from tsfl.errors import TsflError

MAGIC = b"TSVF"
VERSION = 1
ACTIVATIONS, GRADIENTS = 1, 2
HEADER = struct.Struct(">4sBBH16sIIII")  # magic, version, kind, party, session, epoch,
#                                          batch, rows, cols
MAX_ROWS = 1 << 16
MAX_COLS = 4096
MAX_ABS = 1e6


class MessageError(TsflError, ValueError):
    """A split-training message refused (names the reason)."""


@dataclass(frozen=True)
class Expect:
    """What the receiver of a message expects, from its own schedule."""

    kind: int
    session: bytes
    party: int
    epoch: int
    batch: int
    rows: int
    cols: int


def encode(kind: int, session: bytes, party: int, epoch: int, batch: int,
           values: np.ndarray) -> bytes:
    """One message; ``values`` is a rows × cols float array."""
    arr = np.ascontiguousarray(values, dtype="<f4")
    if arr.ndim != 2 or not 0 < arr.shape[0] <= MAX_ROWS or not 0 < arr.shape[1] <= MAX_COLS:
        raise MessageError(f"shape {arr.shape} outside the message bounds")
    return HEADER.pack(MAGIC, VERSION, kind, party, session, epoch, batch, *arr.shape) + (
        arr.tobytes())


def decode(msg: bytes, expect: Expect) -> np.ndarray:
    """The rows × cols float32 array of ``msg``, or :class:`MessageError`."""
    if not isinstance(msg, bytes | bytearray | memoryview):
        raise MessageError("message must be bytes")
    msg = bytes(msg)
    if len(msg) < HEADER.size:
        raise MessageError("message shorter than its header")
    magic, ver, kind, party, session, epoch, batch, rows, cols = HEADER.unpack_from(msg)
    if magic != MAGIC or ver != VERSION:
        raise MessageError("not a TSFL split-training v1 message")
    if kind != expect.kind:
        raise MessageError(f"kind {kind}, expected {expect.kind}")
    if session != expect.session:
        raise MessageError("message of another job or session")
    if party != expect.party:
        raise MessageError(f"from party {party}, expected {expect.party}")
    if (epoch, batch) != (expect.epoch, expect.batch):
        raise MessageError(f"batch ({epoch}, {batch}) where ({expect.epoch}, {expect.batch}) "
                           "is due: replayed or out of order")
    if (rows, cols) != (expect.rows, expect.cols):
        raise MessageError(f"shape ({rows}, {cols}), expected ({expect.rows}, {expect.cols})")
    if len(msg) != HEADER.size + 4 * rows * cols:
        raise MessageError(f"payload of {len(msg) - HEADER.size} bytes for a "
                           f"{rows}×{cols} float32 array")
    arr = np.frombuffer(msg, dtype="<f4", offset=HEADER.size).reshape(rows, cols)
    if not np.isfinite(arr).all():
        raise MessageError("non-finite values")
    if float(np.abs(arr).max()) > MAX_ABS:
        raise MessageError(f"values beyond ±{MAX_ABS:g}")
    return arr.astype(np.float32)
