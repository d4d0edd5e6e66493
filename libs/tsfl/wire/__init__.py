"""Wire formats: msgpack envelopes with a schema version, codecs, strict decoders."""

from tsfl.wire.envelope import WIRE_VERSION, WireError, pack, unpack
from tsfl.wire.messages import (
    decode_model,
    decode_update,
    encode_model,
    encode_update,
)

__all__ = [
    "WIRE_VERSION",
    "WireError",
    "decode_model",
    "decode_update",
    "encode_model",
    "encode_update",
    "pack",
    "unpack",
]
