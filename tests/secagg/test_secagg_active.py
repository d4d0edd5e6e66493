"""SecAgg+ against an active server, written as attacks (issue #17): the server routes
every message and tries to learn one client's input — by substituting keys, by
announcing a threshold or graph of its choosing, by splitting the unmask request. Every
attempt is refused by the honest devices, which say why."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from tsfl.config import ConfigError, parse_job
from tsfl.identity import DeviceIdentity, IdentityAuthority
from tsfl.sdk.secagg import SecAggDevice, round_config
from tsfl.secagg import RingSpec, RoundConfig, SecAggRefusal, keys, shamir
from tsfl.secagg.advert import Advert, Trust
from tsfl.secagg.client import SecAggClient
from tsfl.secagg.local import clients_for, enrol, run_round
from tsfl.secagg.ring import quantize
from tsfl.secagg.round import round_id_for
from tsfl.secagg.server import SecAggServer

N = 20


def _config(n=N, size=64, **kw) -> RoundConfig:
    ids = [f"d{i:02d}" for i in range(n)]
    return RoundConfig.build(os.urandom(16), ids, RingSpec(1.0, 16, n), size, **kw)


def _advertised(config):
    ca, idents = enrol(config.cohort)
    server = SecAggServer(config)
    clients = clients_for(config, idents, ca.public_key)
    for c, cl in clients.items():
        server.receive_advert(c, cl.advertise())
    server.close_adverts()
    return ca, idents, server, clients


def _inputs(config):
    rng = np.random.default_rng(0)
    return {c: rng.normal(0, 0.3, config.size).astype(np.float32) for c in config.cohort}


def _codes(config, x, c):
    return quantize(x[c], config.ring, np.random.default_rng(int(c[1:])))


# -- (a) key substitution ------------------------------------------------------------------
def _swap(ads: dict, victim: str, ad: Advert) -> dict:
    return {**ads, victim: ad.to_wire()}


@pytest.mark.parametrize("forgery", ["own_keys_victims_signature", "rogue_authority",
                                     "corrupt_clients_certificate", "unsigned_replay"])
def test_key_substitution_by_the_server_is_refused(forgery):
    """The server puts its own keys in place of a victim's advertisement: had the
    victim's neighbours sealed their shares to the server's c key, and masked with its s
    key, the server would open them and strip the masks. Each forgery it can make
    without the victim's identity key fails a check, and no device seals a thing."""
    config = _config()
    _, idents, server, clients = _advertised(config)
    victim, corrupt = config.cohort[3], config.cohort[7]
    real = server.adverts[victim]
    _, c_pk = keys.new_keypair()
    _, s_pk = keys.new_keypair()
    if forgery == "own_keys_victims_signature":
        fake = dataclasses.replace(real, c_pk=c_pk, s_pk=s_pk)
        match = "does not verify"
    elif forgery == "rogue_authority":  # the server's own CA certifies "the victim"
        rogue = DeviceIdentity.enrol(victim, IdentityAuthority.generate())
        fake = Advert.create(rogue, config.round_id, c_pk, s_pk)
        match = "untrusted authority"
    elif forgery == "corrupt_clients_certificate":  # a colluding client signs for it
        fake = dataclasses.replace(Advert.create(idents[corrupt], config.round_id, c_pk,
                                                 s_pk), device_id=victim)
        match = f"not '{victim}'"
    else:  # the victim's advertisement of another round, replayed
        fake = Advert.create(idents[victim], round_id_for("job", 999), c_pk, s_pk)
        match = "does not verify"
    routed = server.adverts_for(victim)
    tampered = _swap(routed["ads"], victim, fake)
    sealed = {}
    for c, cl in clients.items():
        if c == victim:
            continue
        with pytest.raises(SecAggRefusal, match=match) as refused:
            sealed[c] = cl.share_keys(tampered, routed["eks"])
        assert refused.value.code == "advertisement"
    assert not sealed  # nothing sealed to the server's key: no share of anyone to open
    # the victim itself, shown its own advertisement altered, stops too
    with pytest.raises(SecAggRefusal, match=r"cannot be authenticated|altered this device"):
        clients[victim].share_keys(tampered, routed["eks"])


def test_hybrid_kem_key_substitution_is_refused():
    """In the hybrid mode the server swaps a neighbour's ML-KEM key (the one the victim
    encapsulates to) for its own: the signed hash does not match."""
    config = _config(key_agreement="x25519+mlkem768")
    _, _, server, clients = _advertised(config)
    victim = config.cohort[0]
    routed = server.adverts_for(victim)
    _, own_ek = keys.new_kem_keypair()
    eks = {v: own_ek for v in routed["eks"]}
    with pytest.raises(SecAggRefusal, match=r"ML-KEM key of .* is not the one it signed"):
        clients[victim].share_keys(routed["ads"], eks)


def test_a_device_without_trusted_authorities_refuses_to_start():
    config = _config()
    ident = DeviceIdentity.enrol(config.cohort[0], IdentityAuthority.generate())
    with pytest.raises(SecAggRefusal, match="no trusted identity authority"):
        SecAggClient(config.cohort[0], config, ident, Trust([]))


# -- (b, c) the server's threshold, graph and threat model ----------------------------------
@pytest.mark.parametrize("change", [{"threshold": 1}, {"threshold": 9},
                                    {"neighbours": 2, "threshold": 2},
                                    {"neighbours": 19, "threshold": 11}])
def test_a_threshold_or_graph_departing_from_the_derived_one_is_refused(change):
    """Threshold 1 let a server rebuild an input from one share; a smaller degree lets
    fewer corrupt neighbours suffice. The device derives (k, t) itself."""
    config = _config()
    ident = DeviceIdentity.enrol(config.cohort[0], ca := IdentityAuthority.generate())
    bad = dataclasses.replace(config, **change)
    with pytest.raises(SecAggRefusal, match="departs from the one derived") as refused:
        SecAggClient(config.cohort[0], bad, ident, Trust([ca.public_key]))
    assert refused.value.code == "parameters"


def _task(config: RoundConfig, job="job", number=1, **change):
    raw = {"round_id": config.round_id.hex(), "cohort": list(config.cohort),
           "ring": {"clip": 1.0, "quant_bits": 16, "clients": len(config.cohort)},
           "size": config.size - 0, "neighbours": config.neighbours,
           "threshold": config.threshold, "corruption": config.corruption,
           "dropout": config.dropout, "security_bits": config.security_bits,
           "threshold_fraction": None, "key_agreement": "x25519", "metrics": [],
           "metric_clip": 1000.0, "weight_unit": 100.0}
    return {**raw, **change}


def test_the_task_is_checked_against_the_devices_own_floor():
    config = dataclasses.replace(_config(), round_id=round_id_for("job", 1))
    parsed, _, _ = round_config(_task(config), "job", 1)
    assert parsed.round_id == config.round_id
    with pytest.raises(SecAggRefusal, match="departs"):
        round_config(_task(config, threshold=1), "job", 1)
    with pytest.raises(SecAggRefusal, match="round id"):  # another round's id (replay)
        round_config(_task(config), "job", 2)
    # a server that assumes no corrupt clients (a smaller graph) is below the floor
    lax = RoundConfig.build(config.round_id, config.cohort, config.ring, config.size,
                            corruption=0.0, security_bits=20)
    device = SecAggDevice()
    with pytest.raises(SecAggRefusal, match=r"at least 0\.05"):
        device.check(lax)
    with pytest.raises(SecAggRefusal, match="20-bit"):
        device.check(dataclasses.replace(lax, corruption=0.05))


def test_shares_routed_along_another_graph_are_refused():
    """The graph follows from the signed advertisements: a server that routes a share
    from a client outside a device's derived neighbourhood is caught."""
    config = _config()
    _, _, server, clients = _advertised(config)
    for c, cl in clients.items():
        routed = server.adverts_for(c)
        server.receive_shares(c, cl.share_keys(routed["ads"], routed["eks"]))
    victim = config.cohort[0]
    near = set(server.config.graph(server.seed)[victim])
    stranger = next(c for c in config.cohort if c != victim and c not in near)
    sealed = server.shares_for(victim)
    sealed[stranger] = next(iter(server.shared[stranger].values()))
    x = _inputs(config)
    with pytest.raises(SecAggRefusal, match="non-neighbour"):
        clients[victim].masked_input(_codes(config, x, victim), sealed)


def test_t_at_most_half_k_is_refused_in_the_config():
    with pytest.raises(ConfigError, match=r"t ≤ k/2"):
        parse_job({"name": "x", "crypto": {"mode": "secagg",
                                           "secagg": {"threshold_fraction": 0.3}}})
    spec = parse_job({"name": "x", "crypto": {"mode": "secagg",
                                              "secagg": {"threshold_fraction": 0.5}}})
    assert spec.crypto.secagg.threshold_fraction == 0.5  # t = k/2 + 1: allowed
    with pytest.raises(ConfigError, match=r"simulation\.dropout"):
        parse_job({"name": "x", "crypto": {"mode": "secagg"},
                   "simulation": {"dropout": 0.3}})
    with pytest.raises(ConfigError, match="no SecAgg\\+ graph"):
        parse_job({"name": "x", "clients": {"count": 4, "per_round": 4},
                   "crypto": {"mode": "secagg", "secagg": {"corruption": 0.25,
                                                            "dropout": 0.25}}})


# -- (2) the consistency round -------------------------------------------------------------
def _to_consistency(config):
    _, _, server, clients = _advertised(config)
    for c, cl in clients.items():
        routed = server.adverts_for(c)
        server.receive_shares(c, cl.share_keys(routed["ads"], routed["eks"]))
    x = _inputs(config)
    for c, cl in clients.items():
        server.receive_masked(c, cl.masked_input(_codes(config, x, c), server.shares_for(c)))
    return server, clients


def test_split_unmask_requests_are_refused_and_yield_no_secret_pair():
    """The server tells half of the target's neighbours "everyone survived" (they would
    reveal shares of b_u) and the other half "the target dropped" (shares of s_u). Each
    group signs a different set; nobody sees t neighbour signatures on its own set
    unless its neighbourhood agrees, and the shares the server collects never rebuild
    both secrets of the target."""
    config = _config()
    server, clients = _to_consistency(config)
    target = config.cohort[0]
    near = list(server.config.graph(server.seed)[target])
    everyone = list(config.cohort)
    without = [c for c in everyone if c != target]
    views = {c: (without if c in near[len(near) // 2:] else everyone) for c in everyone}
    signatures = {c: clients[c].consistency(views[c]) for c in everyone
                  if c in views[c]}
    answers, refused = {}, {}
    for c in signatures:
        neighbours = server.config.graph(server.seed)[c]
        try:
            answers[c] = clients[c].unmask({v: signatures[v] for v in neighbours
                                            if v in signatures})
        except SecAggRefusal as exc:
            refused[c] = exc
            assert exc.code == "consistency" and "signed this survivor set" in str(exc)
    assert refused  # the consistency check caught the split
    kinds = {kind: {config.point(c): a[target][1] for c, a in answers.items()
                    if target in a and a[target][0] == kind} for kind in ("b", "s")}
    assert min(len(kinds["b"]), len(kinds["s"])) < config.threshold
    with pytest.raises(shamir.ShamirError):
        shamir.combine(kinds["b"] if len(kinds["b"]) < config.threshold else kinds["s"],
                       config.threshold)


def test_a_survivor_set_below_one_minus_delta_is_refused():
    """Announcing most clients dropped would shrink the crowd a survivor hides in."""
    config = _config(dropout=0.1)
    _, clients = _to_consistency(config)
    few = list(config.cohort[: len(config.cohort) // 2])
    with pytest.raises(SecAggRefusal, match="allows no fewer than") as refused:
        clients[few[0]].consistency(few)
    assert refused.value.code == "dropouts"


def test_forged_consistency_signatures_do_not_count():
    config = _config()
    _, clients = _to_consistency(config)
    everyone = list(config.cohort)
    sigs = {c: cl.consistency(everyone) for c, cl in clients.items()}
    me = config.cohort[0]
    forged = {v: bytes(64) for v in sigs}  # the server's own "signatures"
    with pytest.raises(SecAggRefusal, match="0 neighbours signed"):
        clients[me].unmask(forged)


# -- (d) n and metrics only as sums; the honest path ---------------------------------------
def test_honest_rounds_give_the_exact_sum_in_both_key_agreements():
    for mode in ("x25519", "x25519+mlkem768"):
        config = _config(key_agreement=mode, dropout=0.2)
        x = _inputs(config)
        seeds = {c: int(c[1:]) for c in config.cohort}
        dropped = {"share": {config.cohort[1]}, "masked": {config.cohort[2]},
                   "unmask": {config.cohort[3]}}
        total, survivors = run_round(config, x, seeds, dropped)
        want = np.sum([_codes(config, x, c) for c in survivors], axis=0, dtype=np.uint64)
        assert len(survivors) == N - 2
        np.testing.assert_array_equal(total, want)
