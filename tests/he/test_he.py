"""CKKS aggregation (tsfl.he): parameters, keys, packing, sums against numpy, refusals."""

from __future__ import annotations

import json
import os
import stat

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsfl.core.layout import ParamLayout
from tsfl.he import (
    CkksParams,
    HeError,
    SealedSum,
    SealedVector,
    SecretKeySet,
    choose_params,
    open_vector,
    read_public,
    read_secret,
    seal_vector,
    select_coordinates,
)
from tsfl.he.params import MAX_LOG_Q, noise_std
from tsfl.he.sealed import coeff_bytes


@pytest.fixture(scope="module")
def keys() -> SecretKeySet:
    return SecretKeySet(choose_params(1e-6, 1e4, 10))


def _sum(keys: SecretKeySet, vectors: list[np.ndarray], weights: list[float]) -> np.ndarray:
    pub = keys.public
    acc = SealedSum(pub, vectors[0].size)
    for v, w in zip(vectors, weights, strict=True):
        wire = seal_vector(keys, np.asarray(v, np.float64) * w, w).to_bytes(pub.prime)
        acc.add(SealedVector.from_bytes(wire, pub, v.size))
    return open_vector(keys, SealedVector.from_bytes(acc.result().to_bytes(pub.prime), pub,
                                                     vectors[0].size))


# -- parameters ------------------------------------------------------------------------------
def test_params_follow_precision_and_bound() -> None:
    p = choose_params(1e-6, 1e4, 10)
    assert p.poly_degree == 8192 and p.prime_bits <= 60 and p.security == 128
    assert p.error_bound(10) <= 1e-6
    assert p.prime_bits - p.scale_bits - 2 >= np.log2(1e4)
    coarse = choose_params(1e-3, 10, 10)
    assert coarse.prime_bits < p.prime_bits  # less precision, smaller modulus, fewer bytes


def test_params_below_security_are_refused() -> None:
    with pytest.raises(HeError, match="below 128-bit security"):
        choose_params(1e-6, 1e4, 10, poly_degree=1024)
    with pytest.raises(HeError, match="below 128-bit"):
        CkksParams.from_json({"poly_degree": 2048, "prime_bits": 58, "scale_bits": 30,
                              "security": 128, "max_terms": 10, "precision": 1e-6,
                              "value_bound": 1.0})
    with pytest.raises(HeError, match="security must be one of"):
        choose_params(1e-6, 1.0, 2, security=100)
    assert MAX_LOG_Q[128][8192] == 218  # HE standard, Table 1


def test_params_that_need_two_primes_are_refused() -> None:
    with pytest.raises(HeError, match="one CKKS prime holds at most 60"):
        choose_params(1e-12, 1e8, 1000)


def test_noise_model_matches_measurement() -> None:
    """The decryption error's std is √(K(σ²+1/12))·√(N/2)/Δ (params docstring)."""
    p = choose_params(1e-4, 100, 16, poly_degree=4096)
    k = SecretKeySet(p)
    rng = np.random.default_rng(0)
    for terms in (1, 8):
        vs = [rng.normal(size=p.poly_degree * 4) for _ in range(terms)]
        got = _sum(k, vs, [1.0] * terms)
        err = (got - np.sum(vs, axis=0)) * 2.0 ** p.scale_bits
        predicted = noise_std(p.poly_degree, terms)
        assert 0.85 < err.std() / predicted < 1.15


# -- sums --------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 8191, 8192, 20_001])
def test_weighted_sum_matches_numpy(keys: SecretKeySet, size: int) -> None:
    rng = np.random.default_rng(size)
    vs = [rng.normal(size=size).astype(np.float32) for _ in range(10)]
    ws = [float(w) for w in rng.uniform(0.2, 3.0, size=10)]
    got = _sum(keys, vs, ws)
    ref = np.sum([v.astype(np.float64) * w for v, w in zip(vs, ws, strict=True)], axis=0)
    assert got.shape == (size,)
    assert np.abs(got - ref).max() <= keys.params.error_bound(10) <= 1e-6


def test_wire_expansion_is_below_four(keys: SecretKeySet) -> None:
    v = np.ones(1_000_000, np.float32)
    wire = seal_vector(keys, v, 1.0).to_bytes(keys.public.prime)
    assert len(wire) / v.nbytes <= 4.0
    assert coeff_bytes(keys.public.prime) == (keys.params.prime_bits + 7) // 8


def test_sum_refuses_more_terms_than_the_parameters_hold(keys: SecretKeySet) -> None:
    acc = SealedSum(keys.public, 10)
    for _ in range(10):
        acc.add(seal_vector(keys, np.ones(10), 1.0))
    with pytest.raises(HeError, match="at most"):
        acc.add(seal_vector(keys, np.ones(10), 1.0))


def test_values_beyond_the_bound_are_refused(keys: SecretKeySet) -> None:
    with pytest.raises(HeError, match="value_bound"):
        seal_vector(keys, np.full(4, 2e3), 1.0)
    with pytest.raises(HeError, match="NaN"):
        seal_vector(keys, np.array([1.0, np.nan]), 1.0)


# -- keys: the server side cannot decrypt ------------------------------------------------------
def test_public_part_holds_nothing_that_decrypts(keys: SecretKeySet, tmp_path) -> None:
    public_path, secret_path = keys.write(tmp_path / "keys")
    assert stat.S_IMODE(os.stat(secret_path).st_mode) == 0o600
    public_text = public_path.read_text()
    assert set(json.loads(public_text)) == {"key_id", "params", "prime"}
    assert keys.secret_key[-64:].hex() not in public_text
    pub = read_public(public_path.parent)
    assert pub == keys.public
    # what the server holds (parameters + prime) can build every key but the right one:
    # decrypting with a fresh key of the same parameters gives noise, not the values
    v = np.linspace(-1, 1, 5000)
    sealed = seal_vector(keys, v, 1.0)
    stranger = SecretKeySet(pub.params)
    sealed_as_stranger = SealedVector(stranger.key_id, sealed.size, 1.0, 1, sealed.polys)
    garbage = open_vector(stranger, sealed_as_stranger)
    assert np.abs(garbage - v).mean() > 1e3
    with pytest.raises(HeError, match="key"):
        open_vector(stranger, sealed)
    again = read_secret(secret_path)
    assert again.key_id == keys.key_id
    np.testing.assert_allclose(open_vector(again, sealed), v, atol=1e-6)


def test_secret_file_is_checked(tmp_path) -> None:
    bad = tmp_path / "secret.key"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(HeError, match="not a"):
        read_secret(bad)
    raw = msgpack.unpackb(SecretKeySet(choose_params(1e-3, 10, 2)).to_bytes())
    raw["key_id"] = "0" * 24
    bad.write_bytes(msgpack.packb(raw))
    with pytest.raises(HeError, match="key id mismatch"):
        read_secret(bad)


# -- hostile encrypted sections ----------------------------------------------------------------
def _section(head: dict, coeffs: bytes) -> bytes:
    raw = msgpack.packb(head)
    return len(raw).to_bytes(4, "big") + raw + coeffs


def test_bad_sections_are_refused(keys: SecretKeySet) -> None:
    pub = keys.public
    good = seal_vector(keys, np.ones(100), 1.0)
    wire = good.to_bytes(pub.prime)
    assert SealedVector.from_bytes(wire, pub, 100).terms == 1
    hlen = int.from_bytes(wire[:4], "big")
    head, coeffs = msgpack.unpackb(wire[4:4 + hlen]), wire[4 + hlen:]
    for change, match in [({"key": "x"}, "key"), ({"n": 101}, "holds"),
                          ({"w": -1.0}, "weight"), ({"w": float("nan")}, "weight"),
                          ({"t": 0}, "terms"), ({"t": 11}, "terms"), ({"b": 8}, "bytes")]:
        with pytest.raises(HeError, match=match):
            SealedVector.from_bytes(_section({**head, **change}, coeffs), pub, 100)
    with pytest.raises(HeError, match="bytes"):
        SealedVector.from_bytes(_section(head, coeffs[:-1]), pub, 100)
    width = coeff_bytes(pub.prime)
    over = b"\xff" * width + coeffs[width:]
    with pytest.raises(HeError, match="not reduced"):
        SealedVector.from_bytes(_section(head, over), pub, 100)
    acc = SealedSum(pub, 100)
    with pytest.raises(HeError, match="not reduced"):
        acc.add_section(_section(head, over), check=True)
    for junk in (b"\x00\x00\x00\x03\x93\x01\x02", b"\xff\xff\xff\xff", b"\x00"):
        with pytest.raises(HeError, match=r"header|shorter"):
            SealedVector.from_bytes(junk, pub, 100)


@pytest.mark.parametrize("width", [5, 6, 7, 8])
def test_widen_reads_packed_coefficients(width: int) -> None:
    from tsfl.he.sealed import widen

    rng = np.random.default_rng(width)
    for count in (1, 2, 3, 1000):
        values = rng.integers(0, 1 << (8 * width - 1), count, dtype=np.uint64)
        packed = values.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :width].tobytes()
        np.testing.assert_array_equal(widen(packed, width), values)


def test_section_fast_path_equals_the_checked_path(keys: SecretKeySet) -> None:
    pub = keys.public
    rng = np.random.default_rng(1)
    vs = [rng.normal(size=20_000) for _ in range(10)]
    wires = [seal_vector(keys, v, 1.0).to_bytes(pub.prime) for v in vs]
    fast, slow = SealedSum(pub, 20_000), SealedSum(pub, 20_000)
    for w in wires:
        fast.add_section(w)
        slow.add(SealedVector.from_bytes(w, pub, 20_000))
    np.testing.assert_array_equal(fast.result().polys, slow.result().polys)
    np.testing.assert_allclose(open_vector(keys, fast.result()), np.sum(vs, axis=0), atol=1e-6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_parser(keys: SecretKeySet, data: bytes) -> None:
    with pytest.raises(HeError):
        SealedVector.from_bytes(data, keys.public, 100)


# -- selective encryption ----------------------------------------------------------------------
LAYOUT = ParamLayout([("fc1.weight", (16, 8), "float32"), ("fc1.bias", (16,), "float32"),
                      ("fc2.weight", (4, 16), "float32"), ("fc2.bias", (4,), "float32"),
                      ("out.weight", (3, 4), "float32"), ("out.bias", (3,), "float32")])


def test_selection_by_name_regex_and_fraction() -> None:
    total = LAYOUT.total_size
    assert select_coordinates(LAYOUT).size == total
    fc2 = select_coordinates(LAYOUT, layers=["fc2.weight"])
    assert fc2[0] == 144 and fc2.size == 64
    assert select_coordinates(LAYOUT, regex=r"bias$").size == 16 + 4 + 3
    frac = select_coordinates(LAYOUT, fraction=0.1)
    assert frac.size == int(np.ceil(0.1 * total))
    out = LAYOUT.specs[4].offset
    assert set(range(out, total)) <= set(frac.tolist())  # output layer first
    assert set(range(0, frac.size - 15)) <= set(frac.tolist())  # then the first layer
    union = select_coordinates(LAYOUT, layers=["fc2.bias"], fraction=0.1)
    assert union.size == frac.size  # the fraction counts what the names already chose
    with pytest.raises(HeError, match="not a tensor"):
        select_coordinates(LAYOUT, layers=["nope"])
    with pytest.raises(HeError, match="matches no tensor"):
        select_coordinates(LAYOUT, regex="^zzz")
    with pytest.raises(HeError, match="regular expression"):
        select_coordinates(LAYOUT, regex="(")
