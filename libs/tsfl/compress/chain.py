"""Codec chains: ``[sparsifier] values [lossless]``, e.g. ``["topk", "q8", "zstd"]``.

A chain is declared on the wire next to the codec parameters (``cp``) that the decoder
needs; every parameter is checked against the job's layout and hard limits, and the
payload's sections must have exactly the sizes those parameters imply:

    [indices (topk only)] [value codes] [scales (q*, qsgd)]      (then the lossless stage)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tsfl.compress import lossless, quantize
from tsfl.compress.errors import CodecError
from tsfl.compress.indices import INDEX_FORMATS, decode_indices, encode_indices, index_bytes
from tsfl.compress.sparsify import keep_count, random_k, top_k

SPARSIFIERS = ("topk", "randk")
VALUE_CODECS = ("f32", "q8", "q4", "q2", "qsgd", "zero")
KNOWN_CODECS = SPARSIFIERS + VALUE_CODECS + lossless.LOSSLESS
MIN_BLOCK, MAX_BLOCK = 8, 1 << 20
F32 = np.dtype("<f4")


@dataclass(frozen=True)
class CodecChain:
    sparsifier: str | None = None
    values: str = "f32"
    lossless: str | None = None

    @classmethod
    def parse(cls, names: list[str] | tuple[str, ...]) -> CodecChain:
        """The chain a list of codec names declares, or a :class:`CodecError`."""
        names = list(names)
        if not names or not all(isinstance(n, str) for n in names):
            raise CodecError("codec", f"a codec chain is a non-empty list of names, got {names!r}")
        unknown = [n for n in names if n not in KNOWN_CODECS]
        if unknown:
            raise CodecError("codec", f"unknown codec(s) {unknown}; known: {list(KNOWN_CODECS)}")
        rest = list(names)
        sparsifier = rest.pop(0) if rest[0] in SPARSIFIERS else None
        if not rest or rest[0] not in VALUE_CODECS:
            raise CodecError("codec", f"chain {names}: a value codec {list(VALUE_CODECS)} "
                                      "must follow the optional sparsifier")
        values = rest.pop(0)
        final = rest.pop(0) if rest and rest[0] in lossless.LOSSLESS else None
        if rest:
            raise CodecError("codec", f"chain {names}: the order is [sparsifier] values "
                                      "[lossless], each at most once")
        if values == "zero" and names != ["zero"]:
            raise CodecError("codec", "'zero' (a skipped upload) stands alone")
        return cls(sparsifier, values, final)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.sparsifier, self.values, self.lossless) if n)

    @property
    def label(self) -> str:
        return "+".join(self.names)

    @property
    def lossy(self) -> bool:
        return self.sparsifier is not None or self.values != "f32"

    @property
    def is_skip(self) -> bool:
        """A device's "my change is negligible": an all-zero update with no payload."""
        return self.values == "zero"

    @property
    def is_raw(self) -> bool:
        """Plain float32: the payload is the vector itself (decoded without a copy)."""
        return self.names == ("f32",)


PLAIN = CodecChain()
SKIP = CodecChain(values="zero")


@dataclass(frozen=True)
class CodecSettings:
    """Encoder knobs (the decoder reads what it needs from ``cp``)."""

    ratio: float = 0.01  # topk / randk: fraction of coordinates kept
    block: int = 256  # values per quantization block
    levels: int = 16  # QSGD levels s

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise CodecError("codec", f"ratio must be in (0, 1], got {self.ratio}")
        if not (MIN_BLOCK <= self.block <= MAX_BLOCK and self.block % 8 == 0):
            raise CodecError("codec", f"block must be a multiple of 8 in {MIN_BLOCK}..{MAX_BLOCK}")
        if not 1 <= self.levels <= quantize.MAX_QSGD_LEVELS:
            raise CodecError("codec", f"QSGD levels must be in 1..{quantize.MAX_QSGD_LEVELS}")


@dataclass
class Encoded:
    chain: CodecChain
    params: dict[str, Any]  # "cp" on the wire
    payload: bytes | memoryview
    indices: np.ndarray | None  # the coordinates sent (None: all)
    decoded: np.ndarray  # what the receiver will decode at ``indices`` (error feedback)


def encode_vector(vec: np.ndarray, chain: CodecChain, settings: CodecSettings,
                  rng: np.random.Generator) -> Encoded:
    vec = np.ascontiguousarray(vec, dtype=F32)
    n = vec.size
    params: dict[str, Any] = {"n": n}
    if chain.is_skip:
        return Encoded(chain, params, b"", np.zeros(0, np.int64), np.zeros(0, F32))
    sections: list[bytes | memoryview] = []
    indices: np.ndarray | None = None
    values = vec
    if chain.sparsifier is not None:
        k = keep_count(n, settings.ratio)
        params["k"] = k
        if chain.sparsifier == "topk":
            indices = top_k(vec, k, rng)
            params["idx"], idx_bytes = encode_indices(indices, n)
            sections.append(idx_bytes)
        else:
            seed = int(rng.integers(0, 1 << 63))
            params["seed"] = seed
            indices = random_k(n, k, seed)
        values = vec[indices]
    if chain.values == "f32":
        sections.append(np.ascontiguousarray(values).data.cast("B"))
        decoded = values
    elif chain.values == "qsgd":
        params["block"], params["levels"] = settings.block, settings.levels
        codes, scales, decoded = quantize.quantize_qsgd(values, settings.levels,
                                                        settings.block, rng)
        sections += [codes, scales]
    else:
        params["block"] = settings.block
        codes, scales, decoded = quantize.quantize_uniform(
            values, quantize.UNIFORM_BITS[chain.values], settings.block, rng)
        sections += [codes, scales]
    payload: bytes | memoryview = sections[0] if len(sections) == 1 else b"".join(sections)
    if chain.lossless is not None:
        params["raw"] = len(payload)
        payload = lossless.compress(chain.lossless, payload)
    return Encoded(chain, params, payload, indices, decoded)


def _int_param(params: dict[str, Any], name: str, lo: int, hi: int) -> int:
    value = params.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise CodecError("codec", f"codec parameter {name!r} must be an integer in "
                                  f"{lo}..{hi}, got {value!r}")
    return value


def _value_sections(chain: CodecChain, params: dict[str, Any], m: int) -> tuple[int, int]:
    if chain.values == "f32":
        return 4 * m, 0
    if chain.values == "zero":
        return 0, 0
    block = _int_param(params, "block", MIN_BLOCK, MAX_BLOCK)
    if block % 8:
        raise CodecError("codec", "block must be a multiple of 8")
    if chain.values == "qsgd":
        _int_param(params, "levels", 1, quantize.MAX_QSGD_LEVELS)
        return quantize.qsgd_sizes(m, block)
    return quantize.uniform_sizes(m, quantize.UNIFORM_BITS[chain.values], block)


def payload_size(chain: CodecChain, params: dict[str, Any], n: int) -> int:
    """The payload's exact size before the lossless stage, as the parameters imply."""
    m = n
    idx = 0
    if chain.sparsifier is not None:
        m = _int_param(params, "k", 1, n)
        if chain.sparsifier == "topk":
            fmt = params.get("idx")
            if fmt not in INDEX_FORMATS:
                raise CodecError("codec", f"index format must be one of {list(INDEX_FORMATS)}")
            idx = index_bytes(fmt, m, n)
    codes, scales = _value_sections(chain, params, m)
    return idx + codes + scales


def decode_vector(chain: CodecChain, params: dict[str, Any], payload: bytes | memoryview,
                  n: int) -> np.ndarray:
    """The dense float32 vector of ``n`` coordinates; nothing in ``params`` is trusted."""
    if not isinstance(params, dict):
        raise CodecError("codec", "codec parameters must be a map")
    if params.get("n") != n:
        raise CodecError("shape", f"payload encodes {params.get('n')!r} coordinates, the "
                                  f"layout has {n}")
    size = payload_size(chain, params, n)
    if chain.is_skip:
        if len(payload):
            raise CodecError("shape", "a skipped upload carries no payload")
        return np.zeros(n, F32)
    if chain.lossless is not None:
        if params.get("raw") != size:
            raise CodecError("shape", f"declared raw size {params.get('raw')!r} differs from "
                                      f"the {size} bytes the codec parameters imply")
        payload = lossless.decompress(chain.lossless, payload, size)
    if len(payload) != size:
        raise CodecError("shape", f"payload has {len(payload)} bytes; the codec parameters "
                                  f"imply {size}")
    view = memoryview(payload)
    indices: np.ndarray | None = None
    m = n
    pos = 0
    if chain.sparsifier is not None:
        m = params["k"]
        if chain.sparsifier == "topk":
            width = index_bytes(params["idx"], m, n)
            indices = decode_indices(params["idx"], view[:width], m, n)
            pos = width
        else:
            seed = _int_param(params, "seed", 0, (1 << 63) - 1)
            indices = random_k(n, m, seed)
    codes, scales = _value_sections(chain, params, m)
    code_view, scale_view = view[pos:pos + codes], view[pos + codes:pos + codes + scales]
    if chain.values == "f32":
        values = np.frombuffer(code_view, F32)
    elif chain.values == "qsgd":
        values = quantize.dequantize_qsgd(code_view, scale_view, params["levels"],
                                          params["block"], m)
    else:
        values = quantize.dequantize_uniform(code_view, scale_view,
                                             quantize.UNIFORM_BITS[chain.values],
                                             params["block"], m)
    if indices is None:
        return values
    dense = np.zeros(n, F32)
    dense[indices] = values
    return dense
