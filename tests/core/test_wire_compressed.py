"""Compressed updates and delta models on the wire; the decoder trusts nothing."""

import contextlib
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_frames import mutate as _mutate
from wire_frames import split as _split

from tsfl.compress import CodecChain, CodecSettings, encode_vector
from tsfl.core.layout import ParamLayout
from tsfl.core.update import Update
from tsfl.wire import WireError, decode_model, decode_update, encode_model, encode_update
from tsfl.wire.messages import encode_model_delta, model_base, peek_update_meta

LAYOUT = ParamLayout([("w", (100, 50), "float32"), ("b", (50,), "float32")])
N = LAYOUT.total_size


def _frame(names, ratio=0.05, seed=0):
    rng = np.random.default_rng(seed)
    delta = rng.standard_normal(N).astype(np.float32)
    enc = encode_vector(delta, CodecChain.parse(names), CodecSettings(ratio=ratio), rng)
    upd = Update(job_id="j", round=1, client_id="c", model_version=0, num_examples=5,
                 delta=delta, metrics={})
    return encode_update(upd, LAYOUT, enc), enc


@pytest.mark.parametrize("names", [["topk", "q8", "zstd"], ["q4"], ["randk", "f32", "lz4"],
                                   ["f32", "zstd"], ["zero"]])
def test_compressed_update_roundtrip(names):
    data, enc = _frame(names)
    upd = decode_update(data, LAYOUT)
    assert upd.codecs == tuple(names)
    expected = np.zeros(N, np.float32)
    if enc.indices is None:
        expected = enc.decoded
    else:
        expected[enc.indices] = enc.decoded
    np.testing.assert_array_equal(upd.delta, expected)
    assert peek_update_meta(data)["codecs"] == "+".join(names)


def test_topk_q8_zstd_is_many_times_smaller():
    plain = encode_update(Update("j", 1, "c", 0, 5, np.ones(N, np.float32)), LAYOUT)
    small, _ = _frame(["topk", "q8", "zstd"], ratio=0.01)
    assert len(plain) / len(small) > 30  # 5,050 values: the header is half of it


@pytest.mark.parametrize("field,value,code", [
    ("codecs", ["topk", "zstd"], "codec"),
    ("codecs", ["brotli"], "codec"),
    ("cp", {"n": 3}, "shape"),
    ("cp", "nope", "codec"),
    ("cp", None, "codec"),
    ("codecs", 5, "malformed"),
    ("codecs", [1, 2], "codec"),
])
def test_bad_codec_headers_are_refused(field, value, code):
    data, _ = _frame(["topk", "q8", "zstd"])
    bad = _mutate(data, **{field: value})
    with pytest.raises(WireError) as err:
        decode_update(bad, LAYOUT, verify_checksum=False)
    assert err.value.code == code
    if field == "codecs" and value in (5, [1, 2]):  # the cheap peek refuses bad types too
        with pytest.raises(WireError):
            peek_update_meta(bad)


def test_nonfinite_scales_are_refused():
    data, _enc = _frame(["q8"])
    _head, payload = _split(data)
    raw = bytearray(payload)
    raw[-4:] = np.array([np.inf], "<f4").tobytes()
    with pytest.raises(WireError) as err:
        decode_update(_mutate(data, payload=bytes(raw)), LAYOUT, verify_checksum=False)
    assert err.value.code == "scale"


def test_model_delta_roundtrip_and_missing_base():
    rng = np.random.default_rng(1)
    old = rng.standard_normal(N).astype(np.float32)
    new = old + np.float32(0.01) * rng.standard_normal(N).astype(np.float32)
    data = encode_model_delta("j", 4, new, 3, old, LAYOUT)
    assert len(data) < len(encode_model("j", 4, new, LAYOUT))
    assert model_base(data) == 3
    job, version, vec, _ = decode_model(data, LAYOUT, base=old)
    assert (job, version) == ("j", 4) and vec.tobytes() == new.tobytes()
    with pytest.raises(WireError) as err:
        decode_model(data, LAYOUT)
    assert err.value.code == "base"
    wrong = old.copy()
    wrong[7] += 1
    with pytest.raises(WireError, match="differs from the server"):
        decode_model(data, LAYOUT, base=wrong)


@settings(max_examples=200, deadline=None)
@given(names=st.sampled_from([["topk", "q8", "zstd"], ["q2", "lz4"], ["randk", "qsgd"]]),
       flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1,
                      max_size=6))
def test_mutated_frames_raise_wire_errors_only(names, flips):
    data, _ = _frame(names)
    raw = bytearray(data)
    for pos, value in flips:
        raw[pos % len(raw)] = value
    try:
        upd = decode_update(bytes(raw), LAYOUT, verify_checksum=False)
    except WireError:
        return
    assert upd.delta.shape == (N,)


def test_decoding_allocates_no_more_than_the_layout_implies():
    """A frame that claims a huge payload inside its codec parameters (a zstd bomb, a
    huge k) is refused before anything near that size is allocated."""
    data, enc = _frame(["topk", "q8", "zstd"])
    attempts = [
        _mutate(data, cp={**enc.params, "raw": 1 << 34}),
        _mutate(data, cp={**enc.params, "k": 1 << 31}),
        _mutate(data, cp={**enc.params, "n": 1 << 31}),
    ]
    bomb = encode_vector(np.zeros(4_000_000, np.float32), CodecChain.parse(["f32", "zstd"]),
                         CodecSettings(), np.random.default_rng(0))
    attempts.append(_mutate(data, payload=bomb.payload, codecs=["f32", "zstd"],
                            cp={"n": N, "raw": N * 4}))
    tracemalloc.start()
    try:
        for bad in attempts:
            with pytest.raises(WireError):
                decode_update(bad, LAYOUT, verify_checksum=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * N * 4 + 2 * len(bomb.payload)


_ANY = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1), st.floats(),
                 st.text(max_size=8), st.binary(max_size=8),
                 st.lists(st.one_of(st.text(max_size=6), st.integers(-99, 99)), max_size=4),
                 st.dictionaries(st.text(max_size=4), st.integers(-99, 99), max_size=3))


@settings(max_examples=400, deadline=None)
@given(names=st.sampled_from([["topk", "q8", "zstd"], ["f32"], ["zero"]]),
       fields=st.dictionaries(st.sampled_from(["v", "kind", "job", "round", "client",
                                               "model_version", "num_examples", "metrics",
                                               "layout", "codecs", "cp", "payload_len",
                                               "xxh3"]), _ANY, min_size=1, max_size=4))
def test_hostile_header_fields_raise_wire_errors_only(names, fields):
    data, _ = _frame(names)
    bad = _mutate(data, **fields)
    for decode in (lambda: peek_update_meta(bad),
                   lambda: decode_update(bad, LAYOUT, verify_checksum=False)):
        with contextlib.suppress(WireError):
            decode()
