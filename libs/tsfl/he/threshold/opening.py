"""Opening a round's sum: the silos decrypt it together, through the server, without the
server learning it and without anyone opening anything but the round's sum.

Two steps, each a message from every silo relayed by the server (which answers when
the step is complete), each message signed with the silo's identity key:

1. **sketch**. Every silo names the sum it is asked to open (its SHA-256) and its Shamir
   point; a silo whose section is in the sum's manifest also sends, for ρ = 4 challenge
   vectors r_l, the sketch σ_{i,l} = ⟨r_l, c_i⟩ mod each p of its *own* section (it kept
   it). The r_l are expanded from H(sum ‖ job ‖ round ‖ key ‖ manifest digests) — fixed
   only once the sum is (Fiat–Shamir), so no sum other than Σ c_i satisfies
   Σ_i σ_{i,l} = ⟨r_l, S⟩ for all l but with probability ≤ 2^-29ρ = 2^-116 per try (an
   entry of r_l is a 30-bit word mod p: no value likelier than 2^-29). The server picks
   T, t silos that answered.
2. **partial**. A silo of T first checks (a) every manifest entry: a participant's
   certificate, a signature over (job, round, key id, section digest), distinct devices,
   the weights adding up, at least ``min_contributors`` entries; (b) a signed sketch from
   every contributor and the sketch equations; (c) T: t participants that signed step 1
   for this very sum; (d) that it has not opened another sum of this round (two sums
   differing by one section would reveal it). Then it sends
   d_j + M_j, its partial decryption (:func:`scheme.partial_decrypt`, flooding noise
   included) plus a mask M_j = PRG(K, job, round, x_j) uniform mod q, where K is the
   output key the silos agreed on in the ceremony: the server sees uniform noise.
   Every silo then subtracts Σ_{j∈T} M_j, adds c0 and decodes.

**Commit before reveal.** A colluding silo knows K (it is meant to learn the sum) and
chooses its own section; were it shown the honest sections first (a *rushing* adversary,
the server relaying), it could craft one that cancels all honest sections but a victim's.
So a contributor first sends a signed commitment — its section's digest — and uploads the
section only once it holds the round's full list of signed commitments
(:meth:`OpeningSilo.commit_message`, :meth:`OpeningSilo.accept_commitments`); at the
sketch step it refuses a sum holding any section not in the list it received before it
revealed its own (and it must sketch for the sum to open). Every section in an opened sum
was thus fixed before any honest contributor's was seen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import msgpack
import numpy as np

from tsfl.he.errors import HeError
from tsfl.he.signing import PURPOSE as SECTION_PURPOSE
from tsfl.he.signing import signed_message
from tsfl.he.threshold import scheme
from tsfl.he.threshold.keys import KeyShare
from tsfl.he.threshold.sampling import Prg, derive_key
from tsfl.he.threshold.sections import SumView, pack30, unpack30
from tsfl.identity import DeviceIdentity, IdentityCertificate, IdentityError, verify

SKETCHES = 4
SKETCH = b"tsfl-he-sketch"
PARTIAL = b"tsfl-he-partial"
COMMIT = b"tsfl-he-commit"


def commit_body(job_id: str, round_number: int, key_id: str, digest: bytes) -> bytes:
    """What a contributor signs to commit to its section before revealing it."""
    return msgpack.packb([job_id, round_number, key_id, digest])


def challenge(view: SumView) -> bytes:
    return derive_key(view.digest, b"tsfl-he-sum-check", view.job_id, view.round,
                      view.key_id, *[bytes(e.get("d", b"")) for e in view.manifest])


def sketch(params: Any, polys: np.ndarray, seed: bytes) -> list[list[int]]:
    """σ_l = ⟨r_l, polys⟩ mod each prime, for l < SKETCHES (polys (count, 2, k, N)).
    Products are below 2^60, so eight add up in uint64 before one reduction."""
    primes = np.array(params.primes, dtype=np.uint64).reshape(-1, 1)
    count, _, k, n = polys.shape
    out = []
    for lth in range(SKETCHES):
        r = Prg.derived(seed, b"tsfl-he-sketch-vector", lth).reduced_words(
            params.primes, polys.shape)
        np.multiply(r, polys, out=r)
        partial = r.reshape(count, 2, k, n // 8, 8).sum(axis=-1, dtype=np.uint64)
        np.remainder(partial, primes[:, :1].reshape(k, 1), out=partial)
        total = np.remainder(partial.sum(axis=(0, 1, 3), dtype=np.uint64), primes[:, 0])
        out.append([int(v) for v in total])
    return out


def mask(share: KeyShare, view: SumView, x: int) -> np.ndarray:
    p = share.public.params
    count = view.polys.shape[0]
    return Prg.derived(share.output_key, b"tsfl-he-output-mask", view.job_id, view.round,
                       view.digest, x).uniform_mod(p.primes, (count, p.limbs, p.poly_degree))


def signed_body(view: SumView, x: int, value: Any) -> bytes:
    """What a silo signs in an opening step (the sum named by its digest)."""
    return msgpack.packb([view.job_id, view.round, view.key_id, view.digest, x, value])


def _signer(share: KeyShare, msg: Any, purpose: bytes, view: SumView, value: Any) -> int:
    """The Shamir point of a participant whose signed message this is."""
    try:
        device_id = str(msg["id"])
        x = int(msg["x"])
        member = share.public.participant(device_id)
        cert = IdentityCertificate.from_wire(msg["c"])
        if cert != member.certificate or x != member.x:
            raise IdentityError(f"{device_id!r} signs with another certificate or point")
        verify(cert, purpose, signed_body(view, x, value), msg["s"])
    except (KeyError, TypeError, ValueError, IdentityError, HeError) as exc:
        raise HeError("opening", f"refused to open round {view.round}: {exc}") from None
    return x


class OpeningSilo:
    """One silo's side: its key share, identity, own sections, and what it opened."""

    def __init__(self, share: KeyShare, identity: DeviceIdentity, min_contributors: int = 2):
        if identity.device_id != share.device_id:
            raise HeError("key", "the identity is not the key share's device")
        self.share = share
        self.identity = identity
        self.min_contributors = min_contributors
        self.sections: dict[tuple[str, int], tuple[bytes, np.ndarray]] = {}
        #: (job, round) → device → committed section digest, as received before revealing
        self.committed: dict[tuple[str, int], dict[str, bytes]] = {}
        self.opened: dict[tuple[str, int], bytes] = {}
        self._checked: dict[tuple[bytes, tuple[str, ...]], dict[int, np.ndarray]] = {}
        self._sent: dict[bytes, tuple[tuple[str, ...], dict[str, Any]]] = {}

    def remember(self, job_id: str, round_number: int, digest: bytes, polys: np.ndarray
                 ) -> None:
        """Keep this silo's section of a round (its sketch is computed from it)."""
        self.sections = {k: v for k, v in self.sections.items() if k[0] != job_id}
        self.sections[(job_id, round_number)] = (digest, polys)

    def commit_message(self, job_id: str, round_number: int) -> dict[str, Any]:
        """The signed commitment to this silo's section of the round (kept by
        :meth:`remember`): send it, and reveal the section only after
        :meth:`accept_commitments`."""
        kept = self.sections.get((job_id, round_number))
        if kept is None:
            raise HeError("opening", f"no section of round {round_number} to commit to")
        me = self.share.device_id
        return {"id": me, "d": kept[0], "c": self.identity.certificate.to_wire(),
                "s": self.identity.sign(COMMIT, commit_body(job_id, round_number,
                                                            self.share.key_id, kept[0]))}

    def accept_commitments(self, job_id: str, round_number: int,
                           commits: Iterable[Any]) -> dict[str, bytes]:
        """Check the round's list of commitments (each a participant's signature over its
        digest; this silo's own among them) and keep it: the sections a sum of this round
        may hold. Call before revealing the section."""
        kept = self.sections.get((job_id, round_number))
        public = self.share.public
        seen: dict[str, bytes] = {}
        for msg in commits:
            try:
                device_id = str(msg["id"])
                member = public.participant(device_id)
                if IdentityCertificate.from_wire(msg["c"]) != member.certificate:
                    raise IdentityError(f"{device_id!r} commits with another certificate")
                digest = bytes(msg["d"])
                verify(member.certificate, COMMIT, commit_body(
                    job_id, round_number, public.key_id, digest), msg["s"])
            except (KeyError, TypeError, ValueError, IdentityError, HeError) as exc:
                raise HeError("opening", f"round {round_number}: a commitment is refused: "
                                         f"{exc}") from None
            if seen.setdefault(device_id, digest) != digest:
                raise HeError("opening", f"round {round_number}: two commitments of "
                                         f"{device_id!r}")
        if kept is None or seen.get(self.share.device_id) != kept[0]:
            raise HeError("opening", f"round {round_number}: the commitments do not hold "
                                     "this silo's own")
        self.committed = {k: v for k, v in self.committed.items() if k[0] != job_id}
        self.committed[(job_id, round_number)] = seen
        return seen

    def _claim(self, view: SumView) -> None:
        seen = self.opened.setdefault((view.job_id, view.round), view.digest)
        if seen != view.digest:
            raise HeError("opening", f"refused to open a second sum of round {view.round}")

    def sketch_message(self, view: SumView) -> dict[str, Any]:
        """Step 1: ready, with the sketch of this silo's section if it is in the sum."""
        self._claim(view)
        me = self.share.device_id
        value = None
        mine = [e for e in view.manifest if e.get("id") == me]
        if mine:
            kept = self.sections.get((view.job_id, view.round))
            if kept is None or len(mine) != 1 or bytes(mine[0].get("d", b"")) != kept[0]:
                raise HeError("opening", f"the sum of round {view.round} lists a section of "
                                         f"{me!r} that it did not send")
            self._check_committed(view)
            value = sketch(self.share.public.params, kept[1], challenge(view))
        return {"id": me, "x": self.share.x, "v": value,
                "c": self.identity.certificate.to_wire(),
                "s": self.identity.sign(SKETCH, signed_body(view, self.share.x, value))}

    def _check_committed(self, view: SumView) -> None:
        """Every section of a sum this silo contributed to was committed before it
        revealed its own (a rushing colluder's section, made after seeing the honest
        ones, was not)."""
        committed = self.committed.get((view.job_id, view.round))
        if committed is None:
            raise HeError("opening", f"refused to open round {view.round}: this silo holds "
                                     "no commitments for it (its section went out without "
                                     "them)")
        for e in view.manifest:
            device_id = str(e.get("id"))
            if committed.get(device_id) != bytes(e.get("d", b"")):
                raise HeError("opening", (
                    f"refused to open round {view.round}: the section of {device_id!r} "
                    "was not committed before this silo revealed its own (a section made "
                    "after seeing the others)"))

    def check(self, view: SumView, board: dict[str, Any]) -> dict[int, np.ndarray]:
        """(a)–(d) of the module docstring; the Lagrange coefficients of T."""
        self._claim(view)
        decryptors = board.get("decryptors")
        cache = (view.digest, tuple(decryptors) if isinstance(decryptors, list) else ())
        if cache in self._checked:
            return self._checked[cache]
        lagrange = self._check(view, board)
        self._checked = {cache: lagrange}
        return lagrange

    def _check(self, view: SumView, board: dict[str, Any]) -> dict[int, np.ndarray]:
        public = self.share.public
        manifest = view.manifest
        ids = [e.get("id") for e in manifest]
        if len(set(ids)) != len(ids) or len(ids) < self.min_contributors:
            raise HeError("opening", (f"refused to open round {view.round}: its sum holds "
                                      f"{len(set(ids))} distinct section(s), fewer than "
                                      f"{self.min_contributors}"))
        weight = 0.0
        for e in manifest:
            try:
                member = public.participant(str(e["id"]))
                if IdentityCertificate.from_wire(e["c"]) != member.certificate:
                    raise IdentityError("not the participant's certificate")
                verify(member.certificate, SECTION_PURPOSE, signed_message(
                    view.job_id, view.round, view.key_id, bytes(e["d"])), e["s"])
                weight += float(e["w"])
            except (KeyError, TypeError, ValueError, IdentityError, HeError) as exc:
                raise HeError("opening", f"refused to open round {view.round}: manifest "
                                         f"entry of {e.get('id')!r}: {exc}") from None
        if abs(weight - view.weight) > 1e-9 * max(1.0, weight):
            raise HeError("opening", "the sum's weight is not its sections' weights")
        sketches = board.get("sketches")
        if not isinstance(sketches, dict):
            raise HeError("opening", "no sketches")
        params = public.params
        total = np.zeros((SKETCHES, params.limbs), dtype=object)
        for device_id in ids:
            msg = sketches.get(device_id)
            value = msg.get("v") if isinstance(msg, dict) else None
            if value is None:
                raise HeError("opening", f"no sketch from contributor {device_id!r}")
            _signer(self.share, msg, SKETCH, view, value)
            total = total + np.array(value, dtype=object)
        expect = sketch(params, view.polys, challenge(view))
        primes = np.array(params.primes, dtype=object)
        if not (np.remainder(total, primes) == np.array(expect, dtype=object)).all():
            raise HeError("opening", (f"refused to open round {view.round}: the sum is not "
                                      "the sum of the signed sections (sketch mismatch)"))
        decryptors = board.get("decryptors")
        if not isinstance(decryptors, list) or len(set(decryptors)) != params.threshold:
            raise HeError("opening", f"the decryptors must be {params.threshold} silos")
        xs = [_signer(self.share, sketches.get(d), SKETCH, view,
                      (sketches.get(d) or {}).get("v")) for d in decryptors]
        return scheme.ring_of(params).lagrange_at_zero(xs)

    def partial_message(self, view: SumView, board: dict[str, Any]) -> dict[str, Any]:
        """Step 2 for a silo of T: its masked partial decryption — one per sum. (Two
        partials of one ciphertext under different Lagrange coefficients would let whoever
        unmasks them solve a two-term knapsack for the flooding noises, hence S_j.)"""
        team = tuple(board.get("decryptors") or ())
        sent = self._sent.get(view.digest)
        if sent is not None:
            if sent[0] != team:
                raise HeError("opening", "already sent a partial decryption of this sum for "
                                         "other decryptors")
            return sent[1]
        lagrange = self.check(view, board)
        if self.share.x not in lagrange:
            raise HeError("opening", "this silo is not one of the decryptors")
        params = self.share.public.params
        ring = scheme.ring_of(params)
        d = scheme.partial_decrypt(params, self.share.share, lagrange[self.share.x],
                                   view.polys[:, 1])
        blob = pack30(ring.add(d, mask(self.share, view, self.share.x)))
        digest = hashlib.sha256(blob).digest()
        msg = {"id": self.share.device_id, "x": self.share.x, "d": blob, "v": digest,
               "c": self.identity.certificate.to_wire(),
               "s": self.identity.sign(PARTIAL, signed_body(view, self.share.x, digest))}
        self._sent = {view.digest: (team, msg)}
        return msg

    def combine(self, view: SumView, board: dict[str, Any]) -> np.ndarray:
        """The sum's ``size`` reals, from T's partial decryptions (each verified)."""
        lagrange = self.check(view, board)
        params = self.share.public.params
        ring = scheme.ring_of(params)
        partials = board.get("partials")
        if not isinstance(partials, dict):
            raise HeError("opening", "no partial decryptions")
        count = view.polys.shape[0]
        shape = (count, params.limbs, params.poly_degree)
        primes = np.array(params.primes, dtype=np.uint64).reshape(-1, 1)
        acc = view.polys[:, 0].copy()  # c0 + Σ (d_j + M_j) + Σ (p − M_j), reduced once
        for device_id in board["decryptors"]:
            msg = partials.get(device_id)
            if not isinstance(msg, dict) or not isinstance(msg.get("d"), bytes):
                raise HeError("opening", f"no partial decryption from {device_id!r}")
            digest = hashlib.sha256(msg["d"]).digest()
            x = _signer(self.share, msg, PARTIAL, view, digest)
            if x not in lagrange:
                raise HeError("opening", f"{device_id!r} is not a decryptor")
            masked = unpack30(msg["d"], int(np.prod(shape))).reshape(shape)
            if (masked >= primes).any():
                raise HeError("opening", f"the partial of {device_id!r} is not reduced")
            np.add(acc, masked, out=acc)
            np.add(acc, primes - mask(self.share, view, x), out=acc)
        return scheme.decode(params, ring.reduce(acc), view.size)
