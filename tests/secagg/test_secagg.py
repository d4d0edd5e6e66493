"""SecAgg+: exact sums with dropouts up to the threshold, clean aborts below it, the
graph parameters of Bell et al. 2020, n and metrics inside the masked vector."""

import os
from pathlib import Path

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag

from tsfl.secagg import RingSpec, RoundConfig, SecAggAbort, keys, shamir
from tsfl.secagg.advert import Trust
from tsfl.secagg.extras import Extras
from tsfl.secagg.graph import harary, neighbours
from tsfl.secagg.local import clients_for, enrol, run_round
from tsfl.secagg.params import ParameterError, derive, markdown_table, table
from tsfl.secagg.ring import dequantize_sum, quantize
from tsfl.secagg.round import SecAggRefusal
from tsfl.secagg.server import SecAggServer


def test_shamir_roundtrip_and_threshold():
    secret = os.urandom(32)
    shares = shamir.split(secret, 3, [1, 2, 5, 9])
    assert shamir.combine({x: shares[x] for x in (2, 5, 9)}, 3) == secret
    assert shamir.combine({x: shares[x] for x in (1, 9, 5)}, 3) == secret
    with pytest.raises(shamir.ShamirError, match="2 shares, 3 needed"):
        shamir.combine({1: shares[1], 2: shares[2]}, 3)
    wrong = {1: shares[1], 2: shares[2], 5: (shares[5] + 1) % shamir.PRIME}
    with pytest.raises(shamir.ShamirError):  # inconsistent: not a 32-byte secret
        shamir.combine(wrong, 3)
    with pytest.raises(shamir.ShamirError):
        shamir.split(secret, 3, [1, 1, 2])


def test_ring_encoding_never_wraps_and_is_unbiased():
    spec = RingSpec(clip=1.0, quant_bits=16, clients=1000)
    assert spec.ring_bits == 26
    x = np.random.default_rng(0).uniform(-2, 2, 5000).astype(np.float32)
    codes = quantize(x, spec, np.random.default_rng(1))
    assert codes.max() <= spec.levels
    total = codes * np.uint64(1000)  # the worst case: 1000 clients at the top code
    assert (total <= spec.mask).all()
    means = np.mean([dequantize_sum(quantize(x, spec, np.random.default_rng(s)), 1, spec)
                     for s in range(200)], axis=0)
    np.testing.assert_allclose(means, np.clip(x, -1, 1), atol=2 / spec.levels)


def test_harary_graph_is_symmetric_regular_and_seeded():
    ids = tuple(f"c{i:04d}" for i in range(1000))
    p = derive(1000, 0.05, 0.1)
    seed, other = os.urandom(32), os.urandom(32)
    g = harary(ids, p.neighbours, seed)
    assert all(len(v) == p.neighbours for v in g.values())
    assert all(u in g[v] for u in ids for v in g[u])
    assert harary(ids, p.neighbours, seed) == g != harary(ids, p.neighbours, other)
    assert neighbours(ids, p.neighbours, seed, "c0007") == list(g["c0007"])
    complete = harary(ids[:5], 4, seed)
    assert all(len(v) == 4 for v in complete.values())


def test_parameters_follow_bell_et_al_bounds():
    """k grows with γ and δ and stays O(log n)-ish; t > k/2 always (an active server
    splitting the unmask request never gets both secrets); every bound ≤ 2^-σ."""
    for row in table(sizes=(100, 1000), models=((0.0, 0.1), (0.05, 0.1), (0.1, 0.2))):
        assert 2 * row["t"] > row["k"]
    p = derive(1000, 0.05, 0.1)
    assert (p.neighbours, p.threshold) == (104, 66)
    assert max(p.log2_disconnected, p.log2_split) <= -41 and p.log2_incorrect <= -40
    assert derive(1000, 0.1, 0.1).neighbours > p.neighbours > derive(1000, 0.0, 0.1).neighbours
    assert derive(10_000, 0.05, 0.1).neighbours < 200  # 1.3% of the cohort
    assert derive(12, 0.05, 0.1).threshold == 4
    strict = derive(1000, 0.05, 0.1, min_fraction=0.8)  # a higher t needs more neighbours
    assert strict.threshold > 0.8 * strict.neighbours and strict.neighbours > p.neighbours
    with pytest.raises(ParameterError, match="t ≤ k/2"):
        derive(1000, 0.05, 0.1, min_fraction=0.3)
    with pytest.raises(ParameterError, match="no SecAgg\\+ graph"):
        derive(4, 0.25, 0.25)
    assert "| 1000 |" in markdown_table(table(sizes=(1000,), models=((0.05, 0.1),)))


@pytest.mark.parametrize("doc", ["crypto.md", "secagg.md"])
def test_the_documented_k_t_table_is_the_derived_one(doc):
    """The (k, t) tables the threat model documents are what devices derive (issue #17):
    a stale table would promise a tolerance the code does not give."""
    text = (Path(__file__).parents[2] / "docs" / doc).read_text()
    assert markdown_table(table()) in text


def test_extras_sum_n_and_weighted_metrics_exactly():
    extras = Extras(quant_bits=16, metrics=("train_loss", "accuracy"), metric_clip=10.0)
    rows = [(120, {"train_loss": 0.5, "accuracy": 0.9}), (1 << 40, {"train_loss": 2.25}),
            (7, {"train_loss": float("nan"), "accuracy": 50.0})]  # NaN: not reported
    codes = [extras.encode(n, m) for n, m in rows]
    assert all(c.max() < 1 << 16 and c.size == extras.width for c in codes)
    n, metrics = extras.decode_sum(np.sum(codes, axis=0, dtype=np.uint64))
    assert n == 120 + (1 << 40) + 7
    loss = (120 * 0.5 + (1 << 40) * 2.25) / (120 + (1 << 40))
    assert metrics["train_loss"] == pytest.approx(loss, abs=2 ** -16)
    assert metrics["accuracy"] == pytest.approx((120 * 0.9 + 7 * 10.0) / 127, abs=2 ** -16)
    with pytest.raises(ValueError):
        extras.encode((1 << 40) + 1, {})


def _setup(n=30, size=500, seed=0, mode="x25519", dropout=0.2):
    ids = [f"client-{i:03d}" for i in range(n)]
    ring = RingSpec(clip=1.0, quant_bits=16, clients=n)
    config = RoundConfig.build(os.urandom(16), ids, ring, size, dropout=dropout,
                               key_agreement=mode)
    rng = np.random.default_rng(seed)
    inputs = {c: rng.normal(0, 0.3, size).astype(np.float32) for c in ids}
    seeds = {c: 1000 + i for i, c in enumerate(ids)}
    return config, inputs, seeds


def _expected(config, inputs, seeds, survivors):
    total = np.zeros(config.size, np.uint64)
    for c in survivors:
        total += quantize(inputs[c], config.ring, np.random.default_rng(seeds[c]))
    return total


@pytest.mark.parametrize("mode", ["x25519", "x25519+mlkem768"])
@pytest.mark.parametrize("stage", [None, "share", "masked", "consistency", "unmask"])
def test_sum_is_exact_with_dropouts_at_each_stage(stage, mode):
    config, inputs, seeds = _setup(mode=mode)
    drop = {stage: set(config.cohort[:4])} if stage else {}  # δn = 6 may drop
    total, survivors = run_round(config, inputs, seeds, drop)
    dropped = drop.get(stage, set())
    if stage in ("consistency", "unmask"):  # they sent masked inputs: their values count
        assert survivors == list(config.cohort)
    else:
        assert set(survivors) == set(config.cohort) - dropped
    np.testing.assert_array_equal(total, _expected(config, inputs, seeds, survivors))
    plain = np.sum([np.clip(inputs[c], -1, 1) for c in survivors], axis=0)
    np.testing.assert_allclose(dequantize_sum(total, len(survivors), config.ring), plain,
                               atol=len(survivors) * 2 / config.ring.levels)


def test_more_dropouts_than_delta_abort_cleanly():
    config, inputs, seeds = _setup(n=12, dropout=0.1)  # ⌈0.9 · 12⌉ = 11 must stay
    with pytest.raises(SecAggAbort, match="needed"):
        run_round(config, inputs, seeds, {"masked": set(config.cohort[:2])})
    with pytest.raises(SecAggAbort, match="needed"):
        run_round(config, inputs, seeds, {"advertise": set(config.cohort[:2])})
    everyone_but_few = set(config.cohort[: len(config.cohort) - config.threshold + 1])
    with pytest.raises(SecAggAbort, match=r"too many dropouts|needed"):
        run_round(config, inputs, seeds, {"unmask": everyone_but_few})


def _shared(config, ca=None, idents=None):
    """Server and clients after stage 2 (keys advertised and checked, shares routed)."""
    if idents is None:
        ca, idents = enrol(config.cohort)
    server = SecAggServer(config)
    clients = clients_for(config, idents, ca.public_key)
    for c, cl in clients.items():
        server.receive_advert(c, cl.advertise())
    server.close_adverts()
    for c, cl in clients.items():
        routed = server.adverts_for(c)
        server.receive_shares(c, cl.share_keys(routed["ads"], routed["eks"]))
    return server, clients


def _masked(config, server, clients, inputs, seeds):
    for c, cl in clients.items():
        codes = quantize(inputs[c], config.ring, np.random.default_rng(seeds[c]))
        server.receive_masked(c, cl.masked_input(codes, server.shares_for(c)))


def test_a_client_never_reveals_both_secrets_of_a_neighbour():
    config, inputs, seeds = _setup(n=8)
    server, clients = _shared(config)
    _masked(config, server, clients, inputs, seeds)
    me, other = config.cohort[0], server.config.graph(server.seed)[config.cohort[0]][0]
    everyone = list(config.cohort)
    for c, cl in clients.items():
        server.receive_signature(c, cl.consistency(everyone))
    clients[me].unmask(server.signatures_for(me))  # reveals other's self-mask share
    with pytest.raises(SecAggRefusal, match="two different survivor sets"):
        clients[me].consistency([c for c in everyone if c != other])  # a lying server
    with pytest.raises(SecAggAbort, match="out of order"):
        clients[me].unmask(server.signatures_for(me))


@pytest.mark.parametrize("mode", ["x25519", "x25519+mlkem768"])
def test_tampered_shares_are_detected(mode):
    config, inputs, _ = _setup(n=6, mode=mode, dropout=0.0)
    server, clients = _shared(config)
    victim = config.cohort[1]
    sealed = server.shares_for(victim)
    sender = next(iter(sealed))
    for at in (-1, 5, -40):  # the AES-GCM tag, the KEM ciphertext (hybrid), the body
        blob = bytearray(sealed[sender])
        blob[at] ^= 1
        with pytest.raises(SecAggRefusal, match="tampered"):
            clients[victim]._open(sender, bytes(blob))
    codes = quantize(inputs[victim], config.ring, np.random.default_rng(0))
    forged = dict(sealed)
    forged[sender] = sealed[next(s for s in sealed if s != sender)]  # replayed to another
    with pytest.raises(SecAggRefusal, match="tampered"):
        clients[victim].masked_input(codes, forged)


def test_key_material_stays_out_of_reprs_and_sealed_shares_bind_their_route():
    config, _, _ = _setup(n=4, dropout=0.0)
    ca, idents = enrol(config.cohort)
    client = clients_for(config, idents, ca.public_key)[config.cohort[0]]
    client.advertise()
    assert "_sk" not in repr(client) and client._s_sk.hex() not in repr(client)
    a_sk, a_pk = keys.new_keypair()
    b_sk, b_pk = keys.new_keypair()
    key = keys.agree(a_sk, b_pk, b"share")
    assert key == keys.agree(b_sk, a_pk, b"share") != keys.agree(a_sk, b_pk, b"mask")
    x = keys.exchange(a_sk, b_pk)
    k_ab = keys.channel_key(x, b"", b"", b"r", "a", "b")
    assert k_ab != keys.channel_key(x, b"", b"", b"r", "b", "a")  # one key per direction
    assert k_ab != keys.channel_key(x, b"", b"", b"r2", "a", "b")  # and per round
    sealed = keys.seal(k_ab, b"payload", keys.route(b"r", "a", "b"))
    assert keys.open_sealed(k_ab, sealed, keys.route(b"r", "a", "b")) == b"payload"
    with pytest.raises(InvalidTag):
        keys.open_sealed(k_ab, sealed, keys.route(b"r", "a", "c"))  # replayed elsewhere


def test_hybrid_key_agreement_needs_both_secrets():
    dk, ek = keys.new_kem_keypair()
    ss, ct = keys.encapsulate(ek)
    assert len(ek) == keys.EK_BYTES and len(ct) == keys.KEM_CT_BYTES
    assert keys.decapsulate(dk, ct) == ss
    x = os.urandom(32)
    k = keys.channel_key(x, ss, ct, b"r", "a", "b")
    assert k != keys.channel_key(x, b"", b"", b"r", "a", "b")  # X25519 alone is not it
    assert k != keys.channel_key(os.urandom(32), ss, ct, b"r", "a", "b")  # nor ML-KEM alone


@pytest.mark.slow
def test_three_hundred_clients_with_ten_percent_dropouts_sum_exactly():
    """Every device checks all n advertisements (n² signature checks in one process:
    1,000 clients are the benchmark's, ``python -m benchmarks.secagg``)."""
    config, inputs, seeds = _setup(n=300, size=1000, seed=3, dropout=0.1)
    assert (config.neighbours, config.threshold) == (66, 41)
    ca, idents = enrol(config.cohort)
    dropped = set(config.cohort[::10])
    total, survivors = run_round(config, inputs, seeds, {"masked": dropped},
                                 identities=idents, authority=ca,
                                 trust=Trust([ca.public_key]))
    assert len(survivors) == 270
    np.testing.assert_array_equal(total, _expected(config, inputs, seeds, survivors))


def test_the_benchmark_round_runs_and_sums_exactly():
    """benchmarks/secagg.py keeps running (tiny sizes; timings are never asserted)."""
    from benchmarks.secagg import drops_for, key_agreement_cost, tsfl_round

    inputs = [np.random.default_rng(i).normal(0, 0.5, 2000).astype(np.float32)
              for i in range(20)]
    for agreement in ("x25519", "x25519+mlkem768"):
        row = tsfl_round(inputs, drops_for(20, 0.1), agreement, first=agreement == "x25519")
        assert row["exact"] and row["survivors"] == 18
    costs = key_agreement_cost(4, repeats=1)
    assert [c["key_agreement"] for c in costs] == ["x25519", "x25519+mlkem768"]
