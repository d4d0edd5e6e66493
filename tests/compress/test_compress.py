"""Codecs: each round-trips within its error bound; error feedback fixes top-k's drift."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsfl.compress import (
    CodecChain,
    CodecError,
    CodecSettings,
    ErrorFeedback,
    decode_vector,
    encode_vector,
    lossless,
)
from tsfl.compress.indices import INDEX_FORMATS, decode_indices, encode_indices
from tsfl.compress.sparsify import top_k
from tsfl.compress.xordelta import decode_xor_delta, encode_xor_delta

RNG = np.random.default_rng(0)


def roundtrip(x, names, **settings):
    chain = CodecChain.parse(names)
    enc = encode_vector(x, chain, CodecSettings(**settings), np.random.default_rng(1))
    out = decode_vector(chain, enc.params, bytes(enc.payload), x.size)
    expected = np.zeros_like(x)
    if enc.indices is None:
        expected = enc.decoded
    else:
        expected[enc.indices] = enc.decoded
    np.testing.assert_array_equal(out, expected)  # the sender knows exactly what arrives
    return enc, out


@pytest.mark.parametrize("names", [
    ["f32"], ["q8"], ["topk", "q8", "zstd"], ["randk", "f32"], ["q4", "lz4"], ["qsgd"],
    ["topk", "qsgd", "zstd"], ["zero"]])
def test_chain_parse_roundtrip(names):
    chain = CodecChain.parse(names)
    assert list(chain.names) == names
    assert chain.label == "+".join(names)


@pytest.mark.parametrize("names", [
    [], ["zstd"], ["q8", "topk"], ["topk"], ["topk", "q8", "zstd", "lz4"], ["f32", "f32"],
    ["gzip"], ["topk", "zero"], [1]])
def test_chain_parse_refuses(names):
    with pytest.raises(CodecError):
        CodecChain.parse(names)


def test_f32_and_lossless_are_exact():
    x = RNG.standard_normal(1000).astype(np.float32)
    for names in (["f32"], ["f32", "zstd"], ["f32", "lz4"]):
        _, out = roundtrip(x, names)
        np.testing.assert_array_equal(out, x)


def test_topk_keeps_the_largest_magnitudes():
    x = RNG.permutation(np.linspace(-5, 5, 100_001, dtype=np.float32))
    enc, out = roundtrip(x, ["topk", "f32"], ratio=0.01)
    k = enc.params["k"]
    assert k == 1000
    expected = np.sort(np.argsort(-np.abs(x), kind="stable")[:k])
    assert set(expected[np.abs(x[expected]) > np.sort(np.abs(x))[-k]]) <= set(enc.indices)
    np.testing.assert_array_equal(out[enc.indices], x[enc.indices])
    assert np.count_nonzero(out) == k


def test_fast_topk_equals_full_partition():
    x = RNG.standard_normal(500_000).astype(np.float32)
    for k in (10, 5000, 50_000):
        fast = top_k(x, k, np.random.default_rng(3))
        exact = np.sort(np.argpartition(np.abs(x), x.size - k)[-k:])
        np.testing.assert_array_equal(fast, exact)


def test_randk_indices_come_from_the_seed():
    x = RNG.standard_normal(10_000).astype(np.float32)
    enc, out = roundtrip(x, ["randk", "f32"], ratio=0.05)
    assert "idx" not in enc.params and enc.params["seed"] >= 0
    assert len(enc.payload) == 500 * 4  # values only: no index is sent
    np.testing.assert_array_equal(out[enc.indices], x[enc.indices])


@pytest.mark.parametrize("codec,bits", [("q8", 8), ("q4", 4), ("q2", 2)])
def test_uniform_quantization_error_bound_and_size(codec, bits):
    x = (RNG.standard_normal(10_000) * RNG.uniform(0.01, 10)).astype(np.float32)
    block = 128
    enc, out = roundtrip(x, [codec], block=block)
    blocks = np.pad(x, (0, -x.size % block), mode="edge").reshape(-1, block)
    step = (blocks.max(1) - blocks.min(1)) / (2**bits - 1)
    err = np.abs(out - x)
    bound = np.repeat(step, block)[: x.size]
    assert (err <= bound * (1 + 1e-5) + 1e-7).all()
    n_blocks = blocks.shape[0]
    assert len(enc.payload) == n_blocks * block * bits // 8 + n_blocks * 8


def test_qsgd_error_bound():
    x = RNG.standard_normal(5000).astype(np.float32)
    block, levels = 256, 8
    _, out = roundtrip(x, ["qsgd"], block=block, levels=levels)
    padded = np.zeros(-(-x.size // block) * block, np.float32)
    padded[: x.size] = x
    norms = np.linalg.norm(padded.reshape(-1, block), axis=1)
    bound = np.repeat(norms / levels, block)[: x.size]
    assert (np.abs(out - x) <= bound * (1 + 1e-5)).all()


@pytest.mark.parametrize("names", [["q8"], ["q2"], ["qsgd"]])
def test_stochastic_rounding_is_unbiased(names):
    x = RNG.standard_normal(512).astype(np.float32)
    chain = CodecChain.parse(names)
    rng = np.random.default_rng(7)
    mean = np.zeros(x.size, np.float64)
    trials = 2000
    for _ in range(trials):
        enc = encode_vector(x, chain, CodecSettings(block=64, levels=4), rng)
        mean += decode_vector(chain, enc.params, enc.payload, x.size)
    mean /= trials
    # each coordinate's error is bounded by one step; its mean shrinks like 1/sqrt(trials)
    assert np.abs(mean - x).max() < 0.15 * np.abs(x).max() / np.sqrt(trials) * 10


def test_error_feedback_converges_where_plain_topk_drifts():
    """Distributed least squares, f_i(x) = ½‖x − a_i‖²: at the optimum mean(a) the
    clients' gradients cancel, their top-k's do not, so plain top-k settles elsewhere
    (Karimireddy et al. 2019, Sec. 3); with error feedback nothing is lost."""
    rng = np.random.default_rng(0)
    n, d = 5, 200
    a = rng.standard_normal((n, d)).astype(np.float32) * np.linspace(0.1, 3, d,
                                                                     dtype=np.float32)
    optimum = a.mean(0)
    chain, settings = CodecChain.parse(["topk", "f32"]), CodecSettings(ratio=0.05)
    errors = {}
    for feedback in (False, True):
        x = np.zeros(d, np.float32)
        memories = [ErrorFeedback() for _ in range(n)]
        for t in range(2000):
            lr = 0.2 / (1 + t / 50)
            sent = []
            for i in range(n):
                g = lr * (x - a[i])
                enc = (memories[i].encode(g, chain, settings, rng) if feedback
                       else encode_vector(g, chain, settings, rng))
                sent.append(decode_vector(chain, enc.params, enc.payload, d))
            x = x - np.mean(sent, axis=0)
        errors[feedback] = np.linalg.norm(x - optimum) / np.linalg.norm(optimum)
    assert errors[True] < 0.05
    assert errors[False] > 0.3


def test_error_feedback_keeps_what_was_dropped():
    fb = ErrorFeedback()
    x = RNG.standard_normal(1000).astype(np.float32)
    chain = CodecChain.parse(["topk", "q8"])
    enc = fb.encode(x, chain, CodecSettings(ratio=0.1), RNG)
    sent = decode_vector(chain, enc.params, enc.payload, x.size)
    np.testing.assert_allclose(sent + fb.residual, x, atol=1e-6)


@pytest.mark.parametrize("density", [0.001, 0.01, 0.2, 0.6])
def test_index_formats_roundtrip(density):
    n = 50_000
    idx = np.sort(RNG.choice(n, max(1, int(n * density)), replace=False)).astype(np.int64)
    fmt, data = encode_indices(idx, n)
    assert fmt in INDEX_FORMATS
    np.testing.assert_array_equal(decode_indices(fmt, data, idx.size, n), idx)
    for other in INDEX_FORMATS:  # the chosen one is the smallest that fits
        if other != fmt and (other != "gap8" or np.diff(idx, prepend=-1).max() < 256) and (
                other != "gap16" or np.diff(idx, prepend=-1).max() < 65536):
            from tsfl.compress.indices import index_bytes
            assert index_bytes(other, idx.size, n) >= len(data)


@pytest.mark.parametrize("fmt,data,k,n,match", [
    ("gap8", bytes([1, 0, 2]), 3, 10, "duplicate"),
    ("gap8", bytes([5, 6]), 2, 10, "out of bounds"),
    ("abs32", np.array([3, 3], "<u4").tobytes(), 2, 10, "strictly increasing"),
    ("abs32", np.array([3, 1], "<u4").tobytes(), 2, 10, "strictly increasing"),
    ("bitmap", bytes([0xFF, 0x07]), 11, 10, "beyond"),
    ("bitmap", bytes([0x03, 0x00]), 3, 10, "holds 2"),
    ("gap16", bytes(3), 2, 10, "bytes"),
    ("nope", b"", 0, 10, "unknown index format"),
])
def test_index_decoder_refuses(fmt, data, k, n, match):
    with pytest.raises(CodecError, match=match):
        decode_indices(fmt, data, k, n)


def test_lossless_refuses_bombs_and_truncation():
    raw = bytes(10_000_000)
    for name in ("zstd", "lz4"):
        packed = lossless.compress(name, raw)
        assert len(packed) < 100_000
        with pytest.raises(CodecError):  # declares less than it inflates to
            lossless.decompress(name, packed, 1000)
        with pytest.raises(CodecError):
            lossless.decompress(name, packed[: len(packed) // 2], len(raw))
        assert lossless.decompress(name, packed, len(raw)) == raw


def test_xor_delta_is_bit_exact_and_small():
    old = RNG.standard_normal(100_000).astype(np.float32)
    new = old + (RNG.standard_normal(old.size) * 1e-3).astype(np.float32)
    payload = encode_xor_delta(new, old)
    assert len(payload) < 0.8 * new.nbytes
    back = decode_xor_delta(payload, old)
    assert back.tobytes() == new.tobytes()


def test_decoder_checks_params_against_layout():
    x = RNG.standard_normal(1000).astype(np.float32)
    chain = CodecChain.parse(["topk", "q8", "zstd"])
    enc = encode_vector(x, chain, CodecSettings(ratio=0.1), RNG)
    for bad in ({"n": 999}, {"k": 0}, {"k": 1001}, {"k": True}, {"block": 12},
                {"raw": enc.params["raw"] + 1}, {"idx": "gap64"}, {"block": 1 << 30}):
        with pytest.raises(CodecError):
            decode_vector(chain, {**enc.params, **bad}, enc.payload, 1000)
    with pytest.raises(CodecError):
        decode_vector(chain, "not a map", enc.payload, 1000)
    with pytest.raises(CodecError, match="no payload"):
        decode_vector(CodecChain.parse(["zero"]), {"n": 1000}, b"x", 1000)


def test_settings_are_validated():
    for bad in ({"ratio": 0}, {"ratio": 1.5}, {"block": 12}, {"block": 4}, {"levels": 200}):
        with pytest.raises(CodecError):
            CodecSettings(**bad)


CHAINS = [["topk", "q8", "zstd"], ["randk", "q4"], ["q2", "lz4"], ["qsgd", "zstd"],
          ["topk", "f32"], ["f32", "zstd"], ["q8"]]


@settings(max_examples=300, deadline=None)
@given(chain=st.sampled_from(CHAINS), n=st.integers(1, 3000),
       params=st.dictionaries(st.sampled_from(["n", "k", "idx", "block", "levels", "raw",
                                               "seed"]),
                              st.one_of(st.integers(-5, 1 << 40), st.text(max_size=5),
                                        st.none(), st.booleans(),
                                        st.sampled_from(INDEX_FORMATS)), max_size=7),
       payload=st.binary(max_size=4096))
def test_fuzzed_codec_input_never_crashes(chain, n, params, payload):
    try:
        out = decode_vector(CodecChain.parse(chain), params, payload, n)
    except CodecError:
        return
    assert out.shape == (n,) and out.dtype == np.float32


@settings(max_examples=300, deadline=None)
@given(chain=st.sampled_from(CHAINS), n=st.integers(1, 2000), seed=st.integers(0, 1000),
       flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=8),
       cut=st.integers(0, 64))
def test_mutated_payloads_never_crash(chain, n, seed, flips, cut):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    c = CodecChain.parse(chain)
    enc = encode_vector(x, c, CodecSettings(ratio=0.1, block=64), rng)
    data = bytearray(enc.payload)
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    data = data[: max(0, len(data) - cut)] if cut % 3 == 0 else data
    try:
        out = decode_vector(c, enc.params, bytes(data), n)
    except CodecError:
        return
    assert out.shape == (n,) and out.dtype == np.float32
