"""Threshold HE (tsfl.he.threshold), written as attacks.

Adversary: the server operator — it relays the key ceremony and every opening, holds
every section, sum and masked partial decryption — plus, where said, silos colluding
with it (fewer than t). Honest silos follow the protocol. Each test plays the attack and
checks what the adversary gets is noise, or that honest silos refuse."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from tsfl.he import HeError
from tsfl.he.signing import section_digest, sign_section, split_frame
from tsfl.he.threshold import (
    CeremonyParty,
    KeyShare,
    OpeningSilo,
    SectionSum,
    choose_params,
    parse_sum,
    run_ceremony,
    scheme,
    sections,
)
from tsfl.he.threshold.keys import CollectivePublicKey
from tsfl.he.threshold.ntt import NegacyclicNtt
from tsfl.he.threshold.opening import mask
from tsfl.he.threshold.ring import Ring, ntt_primes
from tsfl.he.threshold.sections import pack30, unpack30
from tsfl.identity import DeviceIdentity, IdentityAuthority

JOB, ROUND, SIZE = "job-t", 4, 6000
SILOS = [f"silo-{i}" for i in range(5)]
T = 3


@pytest.fixture(scope="module")
def world():
    """Five silos, t = 3, their ceremony's transcript (the server's view), and a round:
    four silos' signed sections of known values, the he service's sum."""
    ca = IdentityAuthority.generate()
    ids = {s: DeviceIdentity.enrol(s, ca) for s in SILOS}
    params = choose_params(1e-6, 1e4, len(SILOS), len(SILOS), T)
    shares, transcript = run_ceremony([CeremonyParty(ids[s], params, JOB, SILOS,
                                                     [ca.public_key]) for s in SILOS])
    public = shares[0].public
    rng = np.random.default_rng(7)
    values = {s: rng.normal(0, 20, SIZE) for s in SILOS[:4]}
    silos = {sh.device_id: OpeningSilo(sh, ids[sh.device_id]) for sh in shares}
    signed, polys = {}, {}
    for s, v in values.items():
        polys[s] = scheme.encrypt(params, public.pk0, public.a, v)
        signed[s] = sign_section(ids[s], sections.to_bytes(public.key_id, SIZE, 1.0,
                                                           polys[s]), JOB, ROUND)
        head, payload = split_frame(signed[s], 4096)
        silos[s].remember(JOB, ROUND, section_digest(head, payload), polys[s])
    commits = [silos[s].commit_message(JOB, ROUND) for s in values]  # before revealing
    for s in values:
        silos[s].accept_commitments(JOB, ROUND, commits)
    total = _sum(public, signed, ca)
    return {"ca": ca, "ids": ids, "params": params, "shares": {s.device_id: s for s in shares},
            "transcript": transcript, "public": public, "values": values, "polys": polys,
            "signed": signed, "sum": total, "silos": silos}


def _sum(public: CollectivePublicKey, signed: dict[str, bytes], ca: IdentityAuthority
         ) -> bytes:
    from tsfl.he.job import HeJob

    job = HeJob(public.job_key, np.arange(SIZE), np.zeros(0, np.int64), 1.0, {},
                (ca.public_key,))
    acc = SectionSum(public.job_key, SIZE)
    for client, data in signed.items():
        section = job.check_section(data, JOB, ROUND, client)
        acc.add(sections.residues(section.payload, public.job_key, SIZE), section.entry)
    return acc.result(JOB, ROUND)


def _open(world, total: bytes, decryptors: list[str], silos: dict | None = None
          ) -> tuple[np.ndarray, dict]:
    """An honest opening of ``total`` by every silo, T = ``decryptors``."""
    silos = silos or {s: OpeningSilo(world["shares"][s], world["ids"][s]) for s in SILOS}
    for s, kept in world["silos"].items():
        silos[s].sections = dict(kept.sections)
        silos[s].committed = dict(kept.committed)
    key = world["public"].job_key
    board = {"sketches": {s: silos[s].sketch_message(parse_sum(total, key, SIZE))
                          for s in SILOS}, "decryptors": decryptors}
    board["partials"] = {d: silos[d].partial_message(parse_sum(total, key, SIZE), board)
                         for d in decryptors}
    return silos[SILOS[0]].combine(parse_sum(total, key, SIZE), board), board


def _uncorrelated(guess: np.ndarray, secret: np.ndarray) -> None:
    """The adversary's guess is noise: no correlation, and nowhere near the values."""
    assert abs(float(np.corrcoef(guess, secret)[0, 1])) < 0.06
    assert float(np.median(np.abs(guess - secret))) > 100 * float(np.std(secret))


# -- the ring -----------------------------------------------------------------------------------
def _negacyclic(a: list[int], b: list[int], p: int) -> list[int]:
    n, out = len(a), [0] * len(a)
    for i in range(n):
        for j in range(n):
            sign = 1 if i + j < n else -1
            out[(i + j) % n] = (out[(i + j) % n] + sign * a[i] * b[j]) % p
    return out


@pytest.mark.parametrize("n", [32, 64, 128])
def test_ntt_multiplies_in_the_negacyclic_ring(n: int) -> None:
    p = ntt_primes(1)[0]
    ntt = NegacyclicNtt(n, p)
    rng = np.random.default_rng(n)
    a, b = (rng.integers(0, p, (3, n), dtype=np.uint64) for _ in range(2))
    prod = ntt.inverse(ntt.forward(a) * ntt.forward(b) % np.uint64(p))
    for i in range(3):
        assert [int(v) for v in prod[i]] == _negacyclic([int(v) for v in a[i]],
                                                        [int(v) for v in b[i]], p)
    assert np.array_equal(ntt.inverse(ntt.forward(a)), a)


@pytest.mark.parametrize("limbs", [2, 3, 4])
def test_crt_is_exact_near_zero_and_near_half_q(limbs: int) -> None:
    ring = Ring(64, ntt_primes(limbs))
    q = ring.q
    rng = np.random.default_rng(limbs)
    vals = [int(rng.integers(0, 2**62)) * int(rng.integers(0, 2**62)) % q - q // 2
            for _ in range(59)] + [q // 2, -(q // 2), 0, -1, 1]
    res = np.array([[[v % p for v in vals] for p in ring.primes]], dtype=np.uint64)
    got = ring.centered(res)[0]
    assert all(abs(g - v) <= abs(v) * 2**-50 for g, v in zip(got, vals, strict=True))
    floats = np.array([[float(v) for v in vals]])
    exact = ring.from_float_integers(floats)
    assert all(int(exact[0, i, j]) == int(floats[0, j]) % p
               for i, p in enumerate(ring.primes) for j in range(64))


def test_residues_pack_into_30_bits() -> None:
    rng = np.random.default_rng(3)
    v = rng.integers(0, 1 << 30, 4096, dtype=np.uint64)
    v[:4] = (1 << 30) - 1
    packed = pack30(v)
    assert len(packed) == 4096 * 30 // 8
    assert np.array_equal(unpack30(packed, v.size), v)


def test_a_million_values_take_under_four_times_float32(world) -> None:
    p, pub = world["params"], world["public"]
    v = np.ones(1_000_000)
    wire = sections.to_bytes(pub.key_id, v.size, 1.0, scheme.encrypt(p, pub.pk0, pub.a, v))
    assert len(wire) / (4 * v.size) <= 3.77


# -- correctness --------------------------------------------------------------------------------
@pytest.mark.parametrize("decryptors", [["silo-0", "silo-1", "silo-2"],
                                        ["silo-1", "silo-3", "silo-4"]])
def test_t_of_n_opening_equals_the_numpy_sum(world, decryptors) -> None:
    """Any t silos open the sum (the second set: silo-0 and silo-2 dropped out)."""
    got, _ = _open(world, world["sum"], decryptors)
    ref = np.sum(list(world["values"].values()), axis=0)
    err = float(np.abs(got - ref).max())
    assert err <= world["params"].error_bound(4) <= 1e-6


def test_noise_matches_the_parameters_model(world) -> None:
    """The measured error std is within 15% of σ_tot/Δ (flooding dominates)."""
    got, _ = _open(world, world["sum"], SILOS[:3])
    ref = np.sum(list(world["values"].values()), axis=0)
    p = world["params"]
    measured = float(np.std(got - ref))
    assert measured == pytest.approx(p.noise_std(4) / p.scale, rel=0.15)


def test_parameters_follow_the_table() -> None:
    fixed = choose_params(1e-6, 1e4, 10, 10, 6)
    assert (fixed.poly_degree, fixed.limbs, fixed.expansion) == (4096, 2, 3.75)
    assert fixed.q.bit_length() <= 109 and fixed.error_bound(10) <= 1e-6
    stat = choose_params(1e-6, 1e4, 10, 10, 6, flooding="statistical")
    assert (stat.poly_degree, stat.limbs, stat.expansion) == (8192, 4, 7.5)
    assert stat.flood_sigma >= 2**40 * 8 * math.sqrt(10 * scheme_variance(stat))
    loose = choose_params(1e-4, 1e3, 10, 10, 6, flooding="statistical")
    assert (loose.poly_degree, loose.limbs) == (4096, 3)
    with pytest.raises(HeError, match="keying: shared"):
        choose_params(1e-6, 1e4, 10, 100, 51)


def scheme_variance(p) -> float:
    from tsfl.he.threshold.params import fresh_variance

    return fresh_variance(p.poly_degree, p.parties)


def test_statistical_flooding_decrypts_within_precision() -> None:
    ca = IdentityAuthority.generate()
    ids = {s: DeviceIdentity.enrol(s, ca) for s in SILOS[:3]}
    p = choose_params(1e-4, 1e3, 3, 3, 2, flooding="statistical")
    shares, _ = run_ceremony([CeremonyParty(ids[s], p, "j", SILOS[:3], [ca.public_key])
                              for s in SILOS[:3]])
    pub = shares[0].public
    v = np.random.default_rng(1).normal(0, 5, 5000)
    ct = scheme.encrypt(p, pub.pk0, pub.a, v)
    ring = scheme.ring_of(p)
    lam = ring.lagrange_at_zero([shares[0].x, shares[2].x])
    parts = [scheme.partial_decrypt(p, s.share, lam[s.x], ct[:, 1])
             for s in (shares[0], shares[2])]
    assert np.abs(scheme.combine(p, ct[:, 0], parts, v.size) - v).max() <= 1e-4


# -- confidentiality ----------------------------------------------------------------------------
def test_a_silo_and_the_server_cannot_decrypt_another_silos_update(world) -> None:
    """The adversary: silo-4's key share and output key, the ceremony transcript (all
    advertisements, every p0_i, every sealed share), every section and sum, and the
    masked partials of an honest opening. It tries to decrypt silo-1's section."""
    _, board = _open(world, world["sum"], SILOS[:3])
    p, pub = world["params"], world["public"]
    ring = scheme.ring_of(p)
    mine = world["shares"]["silo-4"]
    victim = world["polys"]["silo-1"]
    secret = world["values"]["silo-1"]
    guesses = []
    # its share as if it were the secret, and with every Lagrange coefficient it could use
    guesses.append(scheme.decrypt_with_secret(p, mine.share, victim, SIZE))
    for others in ([1, 2], [2, 3], [1, 3]):
        lam = ring.lagrange_at_zero([mine.x, *others])[mine.x]
        guesses.append(scheme.decrypt_with_secret(p, ring.scale(mine.share, lam), victim,
                                                  SIZE))
    # the honest partials (unmasked with its output key) are for the sum's c1, not the
    # victim's: apply them to the victim's c0 anyway
    view = parse_sum(world["sum"], pub.job_key, SIZE)
    count = view.polys.shape[0]
    unmasked = [ring.sub(unpack30(m["d"], count * p.limbs * p.poly_degree).reshape(
        count, p.limbs, p.poly_degree), mask(mine, view, m["x"]))
        for m in board["partials"].values()]
    guesses.append(scheme.combine(p, victim[:, 0], unmasked, SIZE))
    for guess in guesses:
        _uncorrelated(guess, secret)
    # the transcript's p0_i = −a·s_i + e_i are RLWE samples: as a "secret" they give
    # nothing either
    for deal in world["transcript"]["deal"]:
        p0 = np.frombuffer(deal["p0"], "<u4").astype(np.uint64).reshape(p.limbs,
                                                                        p.poly_degree)
        _uncorrelated(scheme.decrypt_with_secret(p, p0, victim, SIZE), secret)


def test_fewer_than_t_partials_reveal_nothing(world) -> None:
    """t − 1 colluding silos (output key: they unmask partials) combine what they have."""
    p = world["params"]
    ring = scheme.ring_of(p)
    view = parse_sum(world["sum"], world["public"].job_key, SIZE)
    ref = np.sum(list(world["values"].values()), axis=0)
    colluders = [world["shares"][s] for s in ("silo-3", "silo-4")]
    lam = ring.lagrange_at_zero([s.x for s in colluders])
    parts = [scheme.partial_decrypt(p, s.share, lam[s.x], view.polys[:, 1])
             for s in colluders]
    _uncorrelated(scheme.combine(p, view.polys[:, 0], parts, SIZE), ref)
    # and for one silo's section
    victim = world["polys"]["silo-0"]
    parts = [scheme.partial_decrypt(p, s.share, lam[s.x], victim[:, 1]) for s in colluders]
    _uncorrelated(scheme.combine(p, victim[:, 0], parts, SIZE), world["values"]["silo-0"])


def test_the_server_learns_nothing_from_the_masked_partials(world) -> None:
    """The server combines the t masked partials it relayed: uniform noise."""
    _, board = _open(world, world["sum"], SILOS[:3])
    p = world["params"]
    view = parse_sum(world["sum"], world["public"].job_key, SIZE)
    count = view.polys.shape[0]
    masked = [unpack30(m["d"], count * p.limbs * p.poly_degree).reshape(
        count, p.limbs, p.poly_degree) for m in board["partials"].values()]
    ref = np.sum(list(world["values"].values()), axis=0)
    _uncorrelated(scheme.combine(p, view.polys[:, 0], masked, SIZE), ref)


# -- integrity: silos open only the round's sum of signed sections ------------------------------
def _forge(world, polys: np.ndarray, manifest: list, weight: float | None = None) -> bytes:
    pub = world["public"]
    w = weight if weight is not None else float(sum(e["w"] for e in manifest))
    return sections.to_bytes(pub.key_id, SIZE, w, polys, len(manifest),
                             {"j": JOB, "r": ROUND, "m": manifest})


def _manifest(world) -> list:
    head, _ = split_frame(world["sum"], 1 << 20)
    return head["m"]


def test_silos_refuse_to_open_a_victims_section_passed_off_as_the_sum(world) -> None:
    victim = world["polys"]["silo-1"]
    entries = _manifest(world)
    alone = _forge(world, victim, [e for e in entries if e["id"] == "silo-1"])
    with pytest.raises(HeError, match="fewer than 2"):
        _open(world, alone, SILOS[:3])
    # the honest manifest, but the victim's ciphertext as the "sum": the sketch check
    with pytest.raises(HeError, match="sketch mismatch"):
        _open(world, _forge(world, victim, entries), SILOS[:3])
    # the sum minus one section (one section's difference would reveal it)
    rest = _forge(world, sum_of(world, ["silo-0", "silo-2", "silo-3"]), entries)
    with pytest.raises(HeError, match="sketch mismatch"):
        _open(world, rest, SILOS[:3])


def sum_of(world, names: list[str]) -> np.ndarray:
    ring = scheme.ring_of(world["params"])
    acc = world["polys"][names[0]]
    for n in names[1:]:
        acc = ring.add(acc, world["polys"][n])
    return acc


def test_a_silo_opens_one_sum_per_round(world) -> None:
    silos = {s: OpeningSilo(world["shares"][s], world["ids"][s]) for s in SILOS}
    _open(world, world["sum"], SILOS[:3], silos)
    entries = [e for e in _manifest(world) if e["id"] != "silo-1"]
    smaller = _forge(world, sum_of(world, ["silo-0", "silo-2", "silo-3"]), entries)
    with pytest.raises(HeError, match="second sum"):
        _open(world, smaller, SILOS[:3], silos)


def test_a_silo_decrypts_a_sum_once(world) -> None:
    """Asked again for the same decryptors it resends the same partial; for others it
    refuses (two partials under different Lagrange coefficients would give its share)."""
    silos = {s: OpeningSilo(world["shares"][s], world["ids"][s]) for s in SILOS}
    _, board = _open(world, world["sum"], SILOS[:3], silos)
    view = parse_sum(world["sum"], world["public"].job_key, SIZE)
    again = silos["silo-1"].partial_message(view, board)
    assert again["d"] == board["partials"]["silo-1"]["d"]
    with pytest.raises(HeError, match="other decryptors"):
        silos["silo-1"].partial_message(view, {**board, "decryptors": SILOS[1:4]})


def test_a_rushing_colluder_cannot_cancel_the_honest_sections(world) -> None:
    """The attack commit-before-reveal closes. silo-4 colludes with the server, which
    shows it the round's honest sections before it makes its own: their negation, but the
    victim's (silo-1). The round's sum is then the victim's section — and it is the sum of
    signed sections, so the sketch check alone passes it. Every honest contributor
    refuses to sketch it: silo-4's section is not among the commitments it received before
    revealing its own (nor is a section swapped after committing to another)."""
    p, pub, ids = world["params"], world["public"], world["ids"]
    ring = scheme.ring_of(p)
    others = sum_of(world, ["silo-0", "silo-2", "silo-3"])
    crafted = ring.add(ring.sub(np.zeros_like(others), others),
                       scheme.encrypt(p, pub.pk0, pub.a, np.zeros(SIZE)))  # looks fresh
    rushed = sign_section(ids["silo-4"], sections.to_bytes(pub.key_id, SIZE, 1.0, crafted),
                          JOB, ROUND)
    total = _sum(pub, {**world["signed"], "silo-4": rushed}, world["ca"])
    view = parse_sum(total, pub.job_key, SIZE)
    # the hole: opened by t silos, this sum is the victim's update (over 5 weights)
    chosen = [world["shares"][s] for s in SILOS[:3]]
    lam = ring.lagrange_at_zero([s.x for s in chosen])
    parts = [scheme.partial_decrypt(p, s.share, lam[s.x], view.polys[:, 1]) for s in chosen]
    leaked = scheme.combine(p, view.polys[:, 0], parts, SIZE)
    assert np.abs(leaked - world["values"]["silo-1"]).max() < 1e-4
    # the fix: no honest contributor sketches it, and without their sketches it stays shut
    for s in world["values"]:
        silo = OpeningSilo(world["shares"][s], ids[s])
        silo.sections = dict(world["silos"][s].sections)
        silo.committed = dict(world["silos"][s].committed)
        with pytest.raises(HeError, match="'silo-4' was not committed before"):
            silo.sketch_message(parse_sum(total, pub.job_key, SIZE))
    # committing blind to one section and revealing another (the crafted one): refused
    blind = dict(world["silos"]["silo-0"].committed[(JOB, ROUND)])
    blind["silo-4"] = bytes(32)
    silo = OpeningSilo(world["shares"]["silo-0"], ids["silo-0"])
    silo.sections = dict(world["silos"]["silo-0"].sections)
    silo.committed = {(JOB, ROUND): blind}
    with pytest.raises(HeError, match="not committed before"):
        silo.sketch_message(parse_sum(total, pub.job_key, SIZE))
    # and a contributor whose section went out without the round's commitments refuses
    bare = OpeningSilo(world["shares"]["silo-0"], ids["silo-0"])
    bare.sections = dict(world["silos"]["silo-0"].sections)
    with pytest.raises(HeError, match="holds no commitments"):
        bare.sketch_message(parse_sum(world["sum"], pub.job_key, SIZE))


def test_commitment_lists_are_checked_before_revealing(world) -> None:
    """A silo accepts the round's commitments only as its participants signed them, with
    its own among them."""
    silo = OpeningSilo(world["shares"]["silo-0"], world["ids"]["silo-0"])
    silo.sections = dict(world["silos"]["silo-0"].sections)
    mine = silo.commit_message(JOB, ROUND)
    other = world["silos"]["silo-2"].commit_message(JOB, ROUND)
    silo.accept_commitments(JOB, ROUND, [mine, other])
    with pytest.raises(HeError, match="this silo's own"):
        silo.accept_commitments(JOB, ROUND, [other])
    with pytest.raises(HeError, match="does not verify"):
        silo.accept_commitments(JOB, ROUND, [mine, {**other, "d": bytes(32)}])
    rogue = DeviceIdentity.enrol("silo-2", IdentityAuthority.generate())
    with pytest.raises(HeError, match="another certificate"):
        silo.accept_commitments(JOB, ROUND, [mine, {**other,
                                                    "c": rogue.certificate.to_wire()}])


def test_silos_refuse_forged_manifests_sketches_and_decryptors(world) -> None:
    entries = _manifest(world)
    bad_sig = [dict(e) for e in entries]
    bad_sig[0]["d"] = bytes(32)  # the server claims another digest for silo-0's section
    forged = _forge(world, world["polys"]["silo-0"], bad_sig)
    with pytest.raises(HeError, match="did not send"):  # silo-0 itself refuses to sketch
        _open(world, forged, SILOS[:3])
    bystander = OpeningSilo(world["shares"]["silo-4"], world["ids"]["silo-4"])
    with pytest.raises(HeError, match="manifest entry"):  # and any other silo refuses
        bystander.check(parse_sum(forged, world["public"].job_key, SIZE),
                        {"sketches": {}, "decryptors": SILOS[:3]})
    heavier = _forge(world, sum_of(world, list(world["values"])), entries, weight=99.0)
    with pytest.raises(HeError, match="weight"):
        _open(world, heavier, SILOS[:3])
    fresh = {s: OpeningSilo(world["shares"][s], world["ids"][s]) for s in SILOS}
    with pytest.raises(HeError, match="decryptors"):
        _open(world, world["sum"], SILOS[:2], fresh)


def test_the_ceremony_refuses_a_relay_that_substitutes_messages() -> None:
    ca, rogue = IdentityAuthority.generate(), IdentityAuthority.generate()
    ids = {s: DeviceIdentity.enrol(s, ca) for s in SILOS[:3]}
    p = choose_params(1e-6, 1e4, 3, 3, 2)
    parties = [CeremonyParty(ids[s], p, "j", SILOS[:3], [ca.public_key]) for s in SILOS[:3]]
    adverts = [x.advertise() for x in parties]
    # the relay's own key for silo-2, certified by its own authority
    impostor = CeremonyParty(DeviceIdentity.enrol("silo-2", rogue), p, "j", SILOS[:3],
                             [rogue.public_key])
    with pytest.raises(HeError, match="untrusted"):
        parties[0].deal([*adverts[:2], impostor.advertise()])
    deals = [x.deal(adverts) for x in parties]
    swapped = dict(deals[1])
    swapped["p0"] = deals[2]["p0"]  # another silo's public share under silo-1's name
    with pytest.raises(HeError, match="does not verify"):
        parties[0].finish([deals[0], swapped, deals[2]])


def test_key_share_files_round_trip_and_are_private(world, tmp_path) -> None:
    import os
    import stat

    share = world["shares"]["silo-2"]
    path = share.write(tmp_path / "silo-2.share")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    back = KeyShare.from_bytes(path.read_bytes())
    assert back.key_id == share.key_id and np.array_equal(back.share, share.share)
    raw = msgpack.unpackb(path.read_bytes())
    raw["public"]["pk0"] = bytes(len(raw["public"]["pk0"]))
    with pytest.raises(HeError, match="key id"):
        KeyShare.from_bytes(msgpack.packb(raw))


# -- forged sections (the he service's check) ---------------------------------------------------
def test_unsigned_wrong_key_and_tampered_sections_are_refused(world) -> None:
    from tsfl.he.job import HeJob

    pub, ca = world["public"], world["ca"]
    job = HeJob(pub.job_key, np.arange(SIZE), np.zeros(0, np.int64), 1.0, {},
                (ca.public_key,))
    good = world["signed"]["silo-0"]
    job.check_section(good, JOB, ROUND, "silo-0")
    unsigned = sections.to_bytes(pub.key_id, SIZE, 1.0, world["polys"]["silo-0"])
    tampered = bytearray(good)
    tampered[-1] ^= 1  # a residue still below its prime, one bit off
    cases = [(unsigned, "silo-0", "unsigned"), (bytes(tampered), "silo-0", "signature"),
             (good, "silo-1", "identity"),  # replayed under another device's name
             (good, "silo-0", "signature", ROUND + 1)]  # replayed in another round
    # signed by silo-0 for another key (a stale or foreign key), labelled as this job's
    relabel = sections.to_bytes("f" * 64, SIZE, 1.0, world["polys"]["silo-0"])
    foreign = sign_section(world["ids"]["silo-0"], relabel, JOB, ROUND)
    h2, p2 = split_frame(foreign, 4096)
    h2["key"] = pub.key_id
    from tsfl.he.signing import frame

    cases.append((frame(h2, p2), "silo-0", "key"))
    rogue = DeviceIdentity.enrol("silo-0", IdentityAuthority.generate())
    cases.append((sign_section(rogue, unsigned, JOB, ROUND), "silo-0", "identity"))
    for data, client, code, *number in cases:
        with pytest.raises(HeError) as err:
            job.check_section(data, JOB, number[0] if number else ROUND, client)
        assert err.value.code == code, (code, err.value)
