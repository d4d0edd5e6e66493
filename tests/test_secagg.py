"""SecAgg+: exact sums with dropouts up to the threshold, clean aborts below it."""

import os

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag

from tsfl.secagg import RingSpec, RoundConfig, SecAggAbort, SecAggClient, keys, shamir
from tsfl.secagg.graph import harary, neighbour_count
from tsfl.secagg.local import run_round
from tsfl.secagg.protocol import SecAggServer
from tsfl.secagg.ring import dequantize_sum, quantize


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


def test_harary_graph_is_symmetric_with_log_degree():
    ids = [f"c{i:04d}" for i in range(1000)]
    k = neighbour_count(1000)
    assert 20 <= k <= 60
    g = harary(ids, k, seed=7)
    assert all(len(v) == k for v in g.values())
    assert all(u in g[v] for u in ids for v in g[u])
    assert harary(ids, k, seed=7) == g and harary(ids, k, seed=8) != g


def _setup(n=30, size=500, seed=0, fraction=0.5):
    ids = [f"client-{i:03d}" for i in range(n)]
    ring = RingSpec(clip=1.0, quant_bits=16, clients=n)
    config = RoundConfig.build(os.urandom(16), ids, ring, size, graph_seed=seed,
                               threshold_fraction=fraction)
    rng = np.random.default_rng(seed)
    inputs = {c: rng.normal(0, 0.3, size).astype(np.float32) for c in ids}
    seeds = {c: 1000 + i for i, c in enumerate(ids)}
    return config, inputs, seeds


def _expected(config, inputs, seeds, survivors):
    total = np.zeros(config.size, np.uint64)
    for c in survivors:
        total += quantize(inputs[c], config.ring, np.random.default_rng(seeds[c]))
    return total


@pytest.mark.parametrize("stage", [None, "share", "masked", "unmask"])
def test_sum_is_exact_with_dropouts_at_each_stage(stage):
    config, inputs, seeds = _setup()
    k, t = config.neighbours, config.threshold
    drop = {}
    if stage:
        allowed = k - t  # every neighbourhood keeps at least t
        drop = {stage: set(config.cohort[: max(1, allowed // 2)])}
    total, survivors = run_round(config, inputs, seeds, drop)
    dropped = drop.get(stage, set())
    if stage == "unmask":  # they sent masked inputs: their values count
        assert survivors == list(config.cohort)
    else:
        assert set(survivors) == set(config.cohort) - dropped
    np.testing.assert_array_equal(total, _expected(config, inputs, seeds, survivors))
    plain = sum(np.clip(inputs[c], -1, 1) for c in survivors)
    np.testing.assert_allclose(dequantize_sum(total, len(survivors), config.ring), plain,
                               atol=len(survivors) * 2 / config.ring.levels)


def test_too_many_dropouts_abort_cleanly():
    config, inputs, seeds = _setup(n=12)
    everyone_but_few = set(config.cohort[: len(config.cohort) - config.threshold + 1])
    with pytest.raises(SecAggAbort, match="needed"):
        run_round(config, inputs, seeds, {"masked": everyone_but_few})
    with pytest.raises(SecAggAbort, match=r"too many dropouts|needed"):
        run_round(config, inputs, seeds, {"unmask": everyone_but_few})


def _shared(config):
    """Server and clients after stage 2 (keys advertised, shares routed)."""
    server = SecAggServer(config)
    clients = {c: SecAggClient(c, config) for c in config.cohort}
    for c, cl in clients.items():
        server.receive_keys(c, *cl.advertise())
    for c, cl in clients.items():
        server.receive_shares(c, cl.share_keys(dict(server.public_keys)))
    return server, clients


def test_a_client_never_reveals_both_secrets_of_a_neighbour():
    config, inputs, seeds = _setup(n=8)
    server, clients = _shared(config)
    for c, cl in clients.items():
        server.receive_masked(c, cl.masked_input(inputs[c], server.shares_for(c),
                                                 np.random.default_rng(seeds[c])))
    me, other = config.cohort[0], config.graph()[config.cohort[0]][0]
    everyone = set(config.cohort)
    clients[me].unmask(everyone, set())  # reveals other's self-mask share
    with pytest.raises(SecAggAbort, match="both secrets"):  # a lying server asks again
        clients[me].unmask(everyone - {other}, {other})


def test_tampered_shares_are_detected():
    config, inputs, _ = _setup(n=6)
    server, clients = _shared(config)
    victim = config.cohort[1]
    sealed = server.shares_for(victim)
    sender = next(iter(sealed))
    blob = bytearray(sealed[sender])
    blob[-1] ^= 1
    sealed[sender] = bytes(blob)
    with pytest.raises(SecAggAbort, match="tampered"):
        clients[victim].masked_input(inputs[victim], sealed, np.random.default_rng(0))


def test_key_material_stays_out_of_reprs_and_sealed_shares_bind_their_route():
    config, _, _ = _setup(n=4)
    client = SecAggClient(config.cohort[0], config)
    client.advertise()
    assert "_sk" not in repr(client) and client._s_sk.hex() not in repr(client)
    a_sk, a_pk = keys.new_keypair()
    b_sk, b_pk = keys.new_keypair()
    key = keys.agree(a_sk, b_pk, b"share")
    assert key == keys.agree(b_sk, a_pk, b"share") != keys.agree(a_sk, b_pk, b"mask")
    sealed = keys.seal(key, b"payload", b"r|a|b")
    assert keys.open_sealed(key, sealed, b"r|a|b") == b"payload"
    with pytest.raises(InvalidTag):
        keys.open_sealed(key, sealed, b"r|a|c")  # replayed to another receiver


@pytest.mark.slow
def test_a_thousand_clients_with_ten_percent_dropouts_sum_exactly():
    config, inputs, seeds = _setup(n=1000, size=1000, seed=3)
    assert config.neighbours == 40 and config.threshold == 21
    dropped = set(config.cohort[::10])
    total, survivors = run_round(config, inputs, seeds, {"masked": dropped})
    assert len(survivors) == 900
    np.testing.assert_array_equal(total, _expected(config, inputs, seeds, survivors))
