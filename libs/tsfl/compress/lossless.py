"""Lossless entropy stages: zstd and lz4 frames, decoded with a hard output limit."""

from __future__ import annotations

import lz4.frame
import zstandard

from tsfl.compress.errors import CodecError

LOSSLESS = ("zstd", "lz4")
ZSTD_LEVEL = 3


def compress(name: str, data: bytes | memoryview) -> bytes:
    if name == "zstd":
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True
                                        ).compress(data)
    if name == "lz4":
        return lz4.frame.compress(data, store_size=True)
    raise CodecError("codec", f"unknown lossless codec {name!r}; known: {list(LOSSLESS)}")


def decompress(name: str, data: bytes | memoryview, expected: int) -> bytes:
    """Exactly ``expected`` bytes out, never more allocated (a zip bomb is refused)."""
    try:
        if name == "zstd":
            size = zstandard.frame_content_size(data)
            if size != expected:
                raise CodecError("shape", f"zstd frame declares {size} bytes, "
                                          f"header says {expected}")
            out = zstandard.ZstdDecompressor().decompress(data, max_output_size=expected)
        elif name == "lz4":
            dec = lz4.frame.LZ4FrameDecompressor()
            out = dec.decompress(bytes(data), max_length=expected)
            if not dec.eof or dec.unused_data:
                raise CodecError("shape", "lz4 frame is truncated, longer than declared "
                                          "or followed by extra bytes")
        else:
            raise CodecError("codec", f"unknown lossless codec {name!r}")
    except (zstandard.ZstdError, RuntimeError) as exc:
        raise CodecError("malformed", f"{name} stream is corrupt: {exc}") from None
    if len(out) != expected:
        raise CodecError("shape", f"{name} stream holds {len(out)} bytes, header says "
                                  f"{expected}")
    return out
