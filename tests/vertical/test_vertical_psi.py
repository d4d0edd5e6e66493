"""ECDH-PSI (tsfl.vertical.psi / align): correctness against a plain set intersection,
what each side learns, what the relay learns, and refusals of malformed messages."""

from __future__ import annotations

import os
import random
import struct

import pytest

from tsfl.vertical.align import RecordingRelay, align, common_order
from tsfl.vertical.group import GroupError, hash_to_group, is_valid_point, multiply, random_scalar
from tsfl.vertical.psi import HEADER, PsiConfig, PsiError, PsiReceiver, PsiSender, session_id

SALT = b"s" * 32


def cfg(mode: str = "intersection", salt: bytes = SALT, **kw) -> PsiConfig:
    return PsiConfig(salt, session_id(salt, "r", "s"), mode, **kw)  # type: ignore[arg-type]


def run_pair(x, y, mode="intersection", relay=None):
    relay = relay or RecordingRelay()
    c = cfg(mode)
    r, s = PsiReceiver(x, c), PsiSender(y, c)
    resp = relay("s", "r", "response", s.handle_request(relay("r", "s", "request",
                                                              r.request())))
    r.handle_response(resp)
    s.handle_result(relay("r", "s", "result", r.result()))
    return r, s, relay


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_party_intersection_equals_plain_set_intersection(seed):
    rng = random.Random(seed)
    universe = [f"user-{i}" for i in range(600)]
    x = rng.sample(universe, rng.randint(1, 300))
    y = rng.sample(universe, rng.randint(1, 400))
    r, s, _ = run_pair(x, y)
    expected = {i.encode() for i in set(x) & set(y)}
    assert set(r.matches) == expected and set(s.intersection) == expected
    assert r.cardinality == s.cardinality == len(expected)
    assert r.sender_size == len(y) and s.receiver_size == len(x)


def test_integer_and_bytes_ids_and_disjoint_sets():
    r, s, _ = run_pair([1, 2, 3, b"\x00\xff"], [3, 4, b"\x00\xff"])
    assert set(r.matches) == {b"3", b"\x00\xff"} == set(s.intersection)
    r, s, _ = run_pair(["a", "b"], ["c"])
    assert r.matches == [] and s.intersection == [] and s.cardinality == 0


def test_multi_party_alignment_equals_plain_intersection_in_one_order():
    rng = random.Random(5)
    universe = [f"e{i}" for i in range(3000)]
    sets = {"label": rng.sample(universe, 1500), "bank": rng.sample(universe, 2000),
            "lab": rng.sample(universe, 1800), "shop": rng.sample(universe, 2500)}
    al = align("label", sets, SALT)
    expected = set.intersection(*(set(v) for v in sets.values()))
    assert {i.decode() for i in al.ids["bank"]} == expected
    assert al.ids["label"] == al.ids["bank"] == al.ids["lab"] == al.ids["shop"]
    assert al.ids["label"] == common_order(SALT, sorted(i.encode() for i in expected))


def test_cardinality_mode_reveals_the_size_only():
    x = [f"id{i}" for i in range(200)]
    y = [f"id{i}" for i in range(0, 400, 2)]  # the even ids: 100 of x's 200
    r, s, _ = run_pair(x, y, "cardinality")
    assert r.cardinality == 100 and s.cardinality == 100
    assert r.matches == [] and r.match_positions == {} and s.intersection == []
    al = align("a", {"a": x, "b": y, "c": x[:50]}, SALT, mode="cardinality")
    assert al.cardinalities == {"b": 100, "c": 50} and al.ids == {}


def _linking_attack(mode: str) -> float:
    """A curious receiver guesses "x_i is in Y" from whether response position i
    matched a sender tag: exact in intersection mode, chance in cardinality mode."""
    x = [f"id{i}" for i in range(400)]
    truth = [i % 2 == 0 for i in range(400)]
    y = [v for v, t in zip(x, truth, strict=True) if t] + [f"other{i}" for i in range(100)]
    c = cfg(mode)
    r, s = PsiReceiver(x, c), PsiSender(y, c)
    resp = s.handle_request(r.request())
    r.handle_response(resp)
    from tsfl.vertical import psi as p

    n1, n2, body = p.parse(c, resp, p.RESPONSE)
    pts = [body[32 + 32 * i: 64 + 32 * i] for i in range(n1)]
    off = 32 + 32 * n1
    t = c.tag_bytes(n1, n2)
    tags = {body[off + t * j: off + t * (j + 1)] for j in range(n2)}
    prf = multiply(pts, p.invert_scalar(r._key))
    guess = [p._tag(c, v, t) in tags for v in prf]
    return sum(g == t for g, t in zip(guess, truth, strict=True)) / len(truth)


def test_cardinality_mode_receiver_cannot_link_matches_to_its_ids():
    assert _linking_attack("intersection") == 1.0
    assert 0.35 < _linking_attack("cardinality") < 0.65


def test_relay_sees_only_sizes_lengths_do_not_depend_on_the_intersection():
    lens = []
    for y in ([f"id{i}" for i in range(300)], [f"zz{i}" for i in range(300)]):
        _, _, relay = run_pair([f"id{i}" for i in range(100)], y)
        lens.append([(k, len(msg)) for _, _, k, msg in relay.log])
    assert lens[0] == lens[1]


def test_relay_cannot_link_messages_to_ids_without_the_keys():
    ids = [f"patient-{i}" for i in range(300)]
    _, _, relay = run_pair(ids[:200], ids[100:])
    blob = b"".join(msg for *_, msg in relay.log)
    # the relay knows the salt and the whole id universe: its dictionary of H(salt, id)
    # (and of unsalted hashes, and of the raw ids) never appears in what it carried
    dictionary = hash_to_group(SALT, [i.encode() for i in ids])
    dictionary += hash_to_group(b"\x00" * 16, [i.encode() for i in ids])
    assert not any(d in blob for d in dictionary)
    assert not any(i.encode() in blob for i in ids)
    # the same sets in a second session: nothing in common (fresh secret scalars), so
    # the relay cannot even link one run to the next
    _, _, relay2 = run_pair(ids[:200], ids[100:])
    chunks = {m[i:i + 12] for *_, m in relay.log for i in range(HEADER.size, len(m) - 11, 12)}
    assert not any(m[i:i + 12] in chunks
                   for *_, m in relay2.log for i in range(HEADER.size, len(m) - 11, 12))


def test_points_are_validated_as_prime_order_group_elements():
    k = random_scalar()
    identity = bytes([1]) + bytes(31)
    order_two = bytes.fromhex("ec" + "ff" * 30 + "7f")
    order_eight = bytes.fromhex(
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
    non_canonical = bytes.fromhex("ed" + "ff" * 30 + "7f")  # y = p
    for bad in (identity, order_two, order_eight, non_canonical, bytes(32)):
        with pytest.raises(GroupError):
            multiply([bad], k)
    # a point on the curve, of large order, outside the order-ℓ subgroup: P + T (T of
    # order 8), which libsodium's cheap validity check also refuses
    torsioned = _add(hash_to_group(SALT, [b"x"])[0], order_eight)
    assert not is_valid_point(torsioned)
    with pytest.raises(GroupError):
        multiply([torsioned], k)


_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P


def _decode(b: bytes) -> tuple[int, int]:
    y = int.from_bytes(b, "little") & ((1 << 255) - 1)
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    if x & 1 != b[31] >> 7:
        x = _P - x
    return x, y


def _add(a: bytes, b: bytes) -> bytes:
    """Edwards addition in plain Python (test helper: builds points libsodium refuses)."""
    (x1, y1), (x2, y2) = _decode(a), _decode(b)
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, -1, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, -1, _P) % _P
    return (y3 | (x3 & 1) << 255).to_bytes(32, "little")


def _request(n=20):
    c = cfg()
    return c, PsiReceiver([f"i{j}" for j in range(n)], c), PsiSender(
        [f"i{j}" for j in range(n // 2, 2 * n)], c)


def _with_point(msg: bytes, index: int, point: bytes) -> bytes:
    at = HEADER.size + 32 + 32 * index
    return msg[:at] + point + msg[at + 32:]


@pytest.mark.parametrize("tamper", [
    "truncated", "magic", "kind", "session", "mode", "count_over_bound", "length",
    "identity", "small_order", "not_on_curve", "duplicate"])
def test_malformed_requests_are_refused(tamper):
    _, r, s = _request()
    msg = r.request()

    bad = {
        "truncated": msg[:HEADER.size - 1],
        "magic": b"XXXX" + msg[4:],
        "kind": msg[:5] + bytes([2]) + msg[6:],
        "session": msg[:8] + os.urandom(16) + msg[24:],
        "mode": msg[:6] + bytes([2]) + msg[7:],
        "count_over_bound": msg[:24] + struct.pack(">I", 10**9) + msg[28:],
        "length": msg + b"\x00" * 32,
        "identity": _with_point(msg, 3, bytes([1]) + bytes(31)),
        "small_order": _with_point(msg, 3, bytes.fromhex("ec" + "ff" * 30 + "7f")),
        "not_on_curve": _with_point(msg, 3, bytes([2]) + bytes(31)),
        "duplicate": _with_point(msg, 3, msg[HEADER.size + 32 + 32 * 4:
                                             HEADER.size + 32 + 32 * 5]),
    }[tamper]

    with pytest.raises(PsiError):
        s.handle_request(bad)
    s.handle_request(msg)  # the refusal changed nothing: the genuine request still works


def test_oversized_declared_sets_are_refused_before_reading():
    c = cfg(max_receiver_items=10)
    r = PsiReceiver([f"i{j}" for j in range(11)], cfg())
    with pytest.raises(PsiError, match="declares"):
        PsiSender(["a"], c).handle_request(r.request())
    with pytest.raises(PsiError, match="more than"):
        PsiReceiver([f"i{j}" for j in range(11)], c)
    with pytest.raises(PsiError, match="duplicate"):
        PsiReceiver(["a", "a"], c)


def test_replays_and_out_of_order_messages_are_refused():
    _, r, s = _request()
    req = r.request()
    resp = s.handle_request(req)
    with pytest.raises(PsiError, match="second request"):
        s.handle_request(req)
    with pytest.raises(PsiError):  # a request where a response is due
        r.handle_response(req)
    # a response of another session (same sets, same salt, other pair) is refused
    other = PsiConfig(SALT, session_id(SALT, "r", "t"))
    r2, s2 = PsiReceiver([f"i{j}" for j in range(20)], other), PsiSender(["x"], other)
    with pytest.raises(PsiError, match="another session"):
        r.handle_response(s2.handle_request(r2.request()))
    r.handle_response(resp)
    with pytest.raises(PsiError, match="replayed"):
        r.handle_response(resp)
    res = r.result()
    tampered = res[:-1] + bytes([res[-1] ^ 1])
    with pytest.raises(PsiError, match="decrypt"):
        s.handle_result(tampered)
    s.handle_result(res)
    with pytest.raises(PsiError, match="replayed"):
        s.handle_result(res)


def test_a_response_with_an_identity_or_foreign_point_is_refused():
    _, r, s = _request()
    resp = s.handle_request(r.request())
    with pytest.raises(PsiError):
        r.handle_response(_with_point(resp, 0, bytes([1]) + bytes(31)))
    r.handle_response(resp)
    assert r.cardinality == 10


def test_unbalanced_sets():
    small = [f"u{i}" for i in range(0, 4000, 20)]  # 200 ids
    large = [f"u{i}" for i in range(20_000)]
    c = cfg(workers=2)
    r, s = PsiReceiver(small, c), PsiSender(large, c)
    req = r.request()
    resp = s.handle_request(req)
    assert len(req) < 40 * len(small) + 100
    assert c.tag_bytes(200, 20_000) == 8  # ⌈(40 + log2(4e6)) / 8⌉
    assert len(resp) < 32 * len(small) + 8 * len(large) + 100
    assert set(r.handle_response(resp)) == {i.encode() for i in small}
    s.handle_result(r.result())
    assert len(s.intersection) == 200


def test_the_psi_benchmark_runs_and_its_contenders_agree():
    from benchmarks import vertical

    row = vertical.bench_psi([(300, 2000)], 1)[0]
    assert row["tsfl"]["found"] == row["plain_hash"]["found"] == row["expected"] == 150
