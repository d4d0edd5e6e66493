import struct

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_frames import mutate as _mutate

from tsfl.core.layout import ParamLayout
from tsfl.core.update import Update
from tsfl.wire import WireError, decode_model, decode_update, encode_model, encode_update

LAYOUT = ParamLayout([("w", (3, 2), "float32"), ("b", (2,), "float32")])


def _update(**kw):
    base = dict(job_id="j", round=3, client_id="c1", model_version=2, num_examples=17,
                delta=np.arange(8, dtype=np.float32), metrics={"train_loss": 0.5})
    base.update(kw)
    return Update(**base)


def test_update_round_trip():
    data = encode_update(_update(), LAYOUT)
    u = decode_update(data, LAYOUT)
    assert u.key == ("j", 3, "c1") and u.model_version == 2 and u.num_examples == 17
    np.testing.assert_array_equal(u.delta, np.arange(8))
    assert u.metrics == {"train_loss": 0.5} and u.codecs == ("f32",)
    assert u.wire_bytes == len(data)


def test_model_round_trip():
    vec = np.linspace(0, 1, 8).astype(np.float32)
    job, version, out, extra = decode_model(encode_model("j", 4, vec, LAYOUT, {"round": 4}),
                                            LAYOUT)
    assert (job, version, extra) == ("j", 4, {"round": 4})
    np.testing.assert_array_equal(out, vec)


@pytest.mark.parametrize(
    ("mutation", "code"),
    [
        ({"xxh3": 1}, "checksum"),
        ({"payload_len": 3}, "malformed"),
        ({"xxh3": "abc"}, "malformed"),
        ({"layout": "0" * 16}, "layout"),
        ({"v": 99}, "version"),
        ({"kind": "model"}, "kind"),
        ({"num_examples": 0}, "examples"),
        ({"num_examples": True}, "malformed"),
        ({"round": -1}, "malformed"),
        ({"codecs": ["zz"]}, "codec"),
        ({"metrics": {"x": "high"}}, "malformed"),
        ({"client": ""}, "malformed"),
    ],
)
def test_mutated_updates_are_refused_with_a_code(mutation, code):
    data = _mutate(encode_update(_update(), LAYOUT), **mutation)
    with pytest.raises(WireError) as info:
        decode_update(data, LAYOUT)
    assert info.value.code == code


def test_wrong_size_and_nonfinite_payloads():
    short = np.arange(7, dtype=np.float32).tobytes()
    data = _mutate(encode_update(_update(), LAYOUT), payload=short, payload_len=len(short),
                   xxh3=xxhash.xxh3_64_intdigest(short))
    with pytest.raises(WireError) as info:
        decode_update(data, LAYOUT)
    assert info.value.code == "shape"
    for bad in (np.nan, np.inf):
        d = np.zeros(8, np.float32)
        d[3] = bad
        with pytest.raises(WireError) as info:
            decode_update(encode_update(_update(delta=d), LAYOUT), LAYOUT)
        assert info.value.code == "nonfinite"


def test_size_limit_checked_before_parsing():
    data = encode_update(_update(), LAYOUT)
    with pytest.raises(WireError) as info:
        decode_update(data, LAYOUT, max_bytes=len(data) - 1)
    assert info.value.code == "too_large"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(blob):
    with pytest.raises(WireError):
        decode_update(blob, LAYOUT)


def test_huge_but_finite_values_are_not_mistaken_for_nonfinite():
    d = np.full(8, 3e38, np.float32)  # the sum of squares overflows; the values are finite
    assert decode_update(encode_update(_update(delta=d), LAYOUT), LAYOUT).delta[0] == d[0]


def test_decoded_payload_is_a_zero_copy_view():
    data = encode_update(_update(), LAYOUT)
    u = decode_update(data, LAYOUT)
    assert not u.delta.flags.writeable and u.delta.base is not None
    assert u.delta.flags.aligned and u.delta.ctypes.data % 16 == 0


def test_frame_prefix_errors():
    data = encode_update(_update(), LAYOUT)
    for bad in (b"", b"TSF", b"XXXX" + data[4:], data[:4] + struct.pack("<I", 1 << 30)
                + data[8:]):
        with pytest.raises(WireError) as info:
            decode_update(bad, LAYOUT)
        assert info.value.code == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 255))
def test_flipped_bytes_are_caught(position, value):
    data = bytearray(encode_update(_update(), LAYOUT))
    position %= len(data)
    if data[position] == value:
        return
    data[position] = value
    try:
        u = decode_update(bytes(data), LAYOUT)
    except WireError:
        return
    # a flip that still decodes can only have touched metadata, never the payload
    np.testing.assert_array_equal(u.delta, np.arange(8))
