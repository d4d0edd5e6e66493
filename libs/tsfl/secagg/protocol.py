"""SecAgg+ (Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS 2020, Fig. 3/4) secure against an active server with the signed rounds of
Bonawitz et al. ("Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017: signed AdvertiseKeys and the ConsistencyCheck round of its active-adversary
protocol, Sec. 6), transport-free: the client and server state machines.

Threat model: the server is malicious (it routes every message and may drop, replay,
alter or invent any), colluding with up to γn clients; up to δn clients drop out. Each
device holds a long-term identity certified by an authority *it* trusts (not the
server). Stages (U1 ⊇ U2 ⊇ U3 ⊇ U4 ⊇ U5 are the clients still there):

1. *advertise*: each client sends two X25519 public keys, c (share channel) and s
   (pairwise masks) — in the hybrid mode also an ML-KEM-768 encapsulation key — signed
   over (round, its id, the keys) with its certificate (:mod:`tsfl.secagg.advert`).
   The server forwards every advertisement of U1 to everyone.
2. *share*: each client checks every certificate against its own trusted authorities
   and every signature; derives the graph seed from all advertisements and its
   neighbours from it; checks (k, t) against :func:`tsfl.secagg.params.derive` for the
   round's γ, δ, σ (at construction) and that at least ⌈(1 − δ)n⌉ clients advertised.
   Then it draws its self-mask seed b_u, Shamir-shares b_u and its s secret key t-of-k
   among its neighbours, and sends each share sealed (AES-GCM under K_uv,
   :mod:`tsfl.secagg.keys`) for the server to route.
3. *masked input*: y_u = c_u + PRG(b_u) + Σ_{v ∈ N(u) ∩ U2} ±PRG(s_uv)  (mod 2^b), the
   sign + when u < v; c_u the ring codes (update, then n and metrics,
   :mod:`tsfl.secagg.extras`); s_uv = HKDF(X25519(s_u, s_v)).
4. *consistency*: the server names the survivors U3; each signs (round, seed, U3) —
   and refuses a second, different U3, or one smaller than ⌈(1 − δ)n⌉.
5. *unmask*: the server forwards the signatures; a client answers only after t of its
   neighbours signed the same (seed, U3), with a share of b_v for each neighbour in U3
   and of s_v for each neighbour it holds shares of outside U3 — never both for one v.
   The server rebuilds them and gets Σ_{u ∈ U3} c_u exactly; below t shares anywhere
   the round aborts.

Security rests on t > (k + X)/2 for the X corrupt neighbours of any honest client
(:mod:`tsfl.secagg.params`, eq. 2): splitting the unmask request, the server collects at
most (k − X)/2 + X < t shares of one of the two secrets.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tsfl.errors import ErrorKind, TsflError
from tsfl.identity import DeviceIdentity, IdentityError, verify
from tsfl.secagg import graph, keys, params, prg, shamir
from tsfl.secagg.advert import (
    CONSISTENCY,
    Advert,
    Trust,
    consistency_message,
    graph_seed,
)
from tsfl.secagg.keys import EK_BYTES, KEM_CT_BYTES, KeyAgreement
from tsfl.secagg.ring import RingSpec

SHARE_BODY = 2 * 66  # a share of b_u and one of s_u, big-endian GF(2^521 − 1) elements


class SecAggAbort(TsflError, RuntimeError):
    """The round cannot finish securely (too many dropouts, a bad message)."""

    kind = ErrorKind.ABORTED


class SecAggRefusal(SecAggAbort):
    """A device refuses to go on: what the server sent breaks the protocol's security
    (a key it cannot authenticate, parameters it did not derive, a split survivor set).
    ``code`` names the check; the device reports it to the coordinator."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def round_id_for(job_id: str, number: int) -> bytes:
    """The round id every party derives from the job and round (signatures bind it)."""
    return hashlib.sha256(f"tsfl-secagg\x00{job_id}\x00{number}".encode()).digest()[:16]


@dataclass(frozen=True)
class RoundConfig:
    """A round's public parameters; (k, t) follow from (n, γ, δ, σ)."""

    round_id: bytes  # binds every signature, sealed share and mask to this round
    cohort: tuple[str, ...]  # sorted
    ring: RingSpec
    size: int  # ring coordinates masked and summed (the update, then the extras)
    neighbours: int  # k
    threshold: int  # t
    corruption: float = 0.05  # γ
    dropout: float = 0.1  # δ
    security_bits: int = params.SECURITY_BITS  # σ
    threshold_fraction: float | None = None  # raises t above this fraction of k
    key_agreement: KeyAgreement = "x25519"

    @classmethod
    def build(cls, round_id: bytes, cohort: Iterable[str], ring: RingSpec, size: int, *,
              corruption: float = 0.05, dropout: float = 0.1,
              security_bits: int = params.SECURITY_BITS,
              threshold_fraction: float | None = None,
              key_agreement: KeyAgreement = "x25519") -> RoundConfig:
        members = tuple(sorted(cohort))
        p = params.derive(len(members), corruption, dropout, security_bits, None,
                          threshold_fraction)
        return cls(round_id, members, ring, size, p.neighbours, p.threshold, corruption,
                   dropout, security_bits, threshold_fraction, key_agreement)

    def check(self) -> None:
        """Raise :class:`SecAggRefusal` unless this is a round a device takes part in:
        (k, t) derived from (n, γ, δ, σ), t > k/2, a ring that cannot wrap."""
        if self.key_agreement not in keys.KEY_AGREEMENTS:
            raise SecAggRefusal("parameters", f"unknown key agreement {self.key_agreement!r}")
        if tuple(sorted(set(self.cohort))) != self.cohort:
            raise SecAggRefusal("parameters", "the cohort must be sorted and distinct")
        if self.ring.clients < len(self.cohort) or self.size < 1:
            raise SecAggRefusal("parameters", "the ring is too small for the cohort")
        try:
            p = params.derive(len(self.cohort), self.corruption, self.dropout,
                              self.security_bits, None, self.threshold_fraction)
        except params.ParameterError as exc:
            raise SecAggRefusal("parameters", str(exc)) from None
        if (self.neighbours, self.threshold) != (p.neighbours, p.threshold):
            raise SecAggRefusal(
                "parameters", f"the round's graph (k = {self.neighbours}, t = "
                f"{self.threshold}) departs from the one derived for n = {len(self.cohort)}, "
                f"γ = {self.corruption}, δ = {self.dropout}, σ = {self.security_bits} "
                f"(k = {p.neighbours}, t = {p.threshold})")

    @property
    def hybrid(self) -> bool:
        return self.key_agreement == "x25519+mlkem768"

    @property
    def min_survivors(self) -> int:
        """The fewest clients a stage may keep: ⌈(1 − δ)n⌉, and at least t."""
        return max(self.threshold, math.ceil((1 - self.dropout) * len(self.cohort) - 1e-9))

    def graph(self, seed: bytes) -> dict[str, tuple[str, ...]]:
        return graph.harary(self.cohort, self.neighbours, seed)

    def neighbours_of(self, seed: bytes, client: str) -> list[str]:
        return graph.neighbours(self.cohort, self.neighbours, seed, client)

    def point(self, client: str) -> int:
        """The Shamir x-coordinate of a client (its 1-based index in the cohort)."""
        return _points(self.cohort)[client]


_POINTS: dict[tuple[str, ...], dict[str, int]] = {}


def _points(cohort: tuple[str, ...]) -> dict[str, int]:
    found = _POINTS.get(cohort)
    if found is None:
        if len(_POINTS) > 8:
            _POINTS.clear()
        found = _POINTS[cohort] = {c: i + 1 for i, c in enumerate(cohort)}
    return found


def _pair_sign(u: str, v: str) -> int:
    return 1 if u < v else -1


def _mask_seed(s_key: X25519PrivateKey, peer_s_pk: bytes, round_id: bytes) -> bytes:
    return keys.agree(s_key, peer_s_pk, b"mask:" + round_id)


def _refuse(code: str, message: str) -> SecAggRefusal:
    return SecAggRefusal(code, message)


class SecAggClient:
    """One device's side of a round. Every method checks what the server sent before
    using it and raises :class:`SecAggRefusal` when it does not hold up."""

    def __init__(self, client_id: str, config: RoundConfig, identity: DeviceIdentity,
                 trust: Trust):
        if identity.device_id != client_id:
            raise _refuse("identity", f"the identity is {identity.device_id!r}, the device "
                                      f"{client_id!r}")
        if not trust:
            raise _refuse("identity", "no trusted identity authority is configured: this "
                                      "device cannot tell its neighbours' keys from the "
                                      "server's")
        if client_id not in config.cohort:
            raise _refuse("parameters", f"{client_id!r} is not in the round's cohort")
        config.check()
        self.client_id = client_id
        self.config = config
        self.identity = identity
        self.trust = trust
        self._stage = "advertise"
        self._c_key: X25519PrivateKey | None = None
        self._s_key: X25519PrivateKey | None = None
        self._s_sk = b""
        self._kem: MLKEM768PrivateKey | None = None
        self._ad: Advert | None = None
        self._adverts: dict[str, Advert] = {}
        self._seed = b""
        self._neighbours: list[str] = []
        self._x: dict[str, bytes] = {}  # v -> X25519(c_u, c_v)
        self._b = b""
        self._held: dict[str, tuple[int, int]] = {}  # v -> (b share, s share)
        self._survivors: frozenset[str] | None = None
        self._revealed: dict[str, str] = {}  # v -> which secret was revealed

    def __repr__(self) -> str:  # never print key material
        return f"SecAggClient({self.client_id!r})"

    def _enter(self, stage: str, after: str) -> None:
        if self._stage != after:
            raise SecAggAbort(f"{self.client_id}: {stage} out of order (at {self._stage})")
        self._stage = stage

    # -- 1. advertise ----------------------------------------------------------------------
    def advertise(self) -> dict[str, Any]:
        """The advertisement payload: signed keys, the certificate (and the KEM key)."""
        self._enter("share", "advertise")
        c_sk, c_pk = keys.new_keypair()
        self._s_sk, s_pk = keys.new_keypair()
        self._c_key, self._s_key = keys.private_key(c_sk), keys.private_key(self._s_sk)
        ek = b""
        if self.config.hybrid:
            self._kem, ek = keys.new_kem_keypair()
        self._ad = Advert.create(self.identity, self.config.round_id, c_pk, s_pk,
                                 hashlib.sha256(ek).digest() if ek else b"")
        payload = self._ad.to_wire()
        if ek:
            payload["ek"] = ek
        return payload

    # -- 2. share --------------------------------------------------------------------------
    def _check_adverts(self, adverts: Mapping[str, Any]) -> dict[str, Advert]:
        cfg = self.config
        strangers = set(adverts) - set(cfg.cohort)
        if strangers:
            raise _refuse("advertisement", f"advertisements from outside the cohort: "
                                           f"{sorted(strangers)[:3]}")
        parsed = {}
        for v, raw in adverts.items():
            try:
                ad = Advert.from_wire(v, raw)
                self.trust.check(ad.cert, v)
                ad.verify(cfg.round_id)
            except IdentityError as exc:
                raise _refuse("advertisement", f"{self.client_id}: the keys of {v} cannot "
                                               f"be authenticated: {exc}") from None
            if bool(ad.ek_hash) != cfg.hybrid:
                raise _refuse("advertisement", f"the advertisement of {v} does not match "
                                               f"the key agreement {cfg.key_agreement}")
            parsed[v] = ad
        if parsed.get(self.client_id) != self._ad:
            raise _refuse("advertisement", f"{self.client_id}: the server dropped or "
                                           "altered this device's own advertisement")
        if len(parsed) < cfg.min_survivors:
            raise _refuse("dropouts", f"{len(parsed)} of {len(cfg.cohort)} clients "
                                      f"advertised keys; δ = {cfg.dropout} allows no fewer "
                                      f"than {cfg.min_survivors}")
        for name in ("c_pk", "s_pk"):
            if len({getattr(ad, name) for ad in parsed.values()}) != len(parsed):
                raise _refuse("advertisement", "two clients advertised the same key")
        return parsed

    def share_keys(self, adverts: Mapping[str, Any],
                   eks: Mapping[str, bytes] | None = None) -> dict[str, bytes]:
        """Check every advertisement, derive the graph, and seal the shares for each
        neighbour that advertised keys (stage 2). ``eks``: the neighbours' ML-KEM
        encapsulation keys (hybrid mode)."""
        self._enter("masked", "share")
        cfg = self.config
        self._adverts = self._check_adverts(adverts)
        self._seed = graph_seed(cfg.round_id, self._adverts)
        self._neighbours = [v for v in cfg.neighbours_of(self._seed, self.client_id)
                            if v in self._adverts]
        if len(self._neighbours) < cfg.threshold:
            raise SecAggAbort(f"{self.client_id}: {len(self._neighbours)} neighbours left, "
                              f"{cfg.threshold} needed")
        targets = {}
        for v in self._neighbours:
            ek = b""
            if cfg.hybrid:
                ek = (eks or {}).get(v, b"")
                if (not isinstance(ek, bytes) or len(ek) != EK_BYTES
                        or hashlib.sha256(ek).digest() != self._adverts[v].ek_hash):
                    raise _refuse("advertisement", f"the ML-KEM key of {v} is not the one "
                                                   "it signed")
            targets[v] = ek
        self._b = os.urandom(32)
        xs = [cfg.point(v) for v in self._neighbours]
        b_shares = shamir.split(self._b, cfg.threshold, xs)
        s_shares = shamir.split(self._s_sk, cfg.threshold, xs)
        out = {}
        for v, x in zip(self._neighbours, xs, strict=True):
            body = b_shares[x].to_bytes(66, "big") + s_shares[x].to_bytes(66, "big")
            ss, ct = keys.encapsulate(targets[v]) if cfg.hybrid else (b"", b"")
            key = keys.channel_key(self._exchange(v), ss, ct, cfg.round_id, self.client_id, v)
            out[v] = ct + keys.seal(key, body, keys.route(cfg.round_id, self.client_id, v))
        return out

    def _exchange(self, v: str) -> bytes:
        found = self._x.get(v)
        if found is None:
            assert self._c_key is not None
            found = self._x[v] = keys.exchange(self._c_key, self._adverts[v].c_pk)
        return found

    # -- 3. masked input -------------------------------------------------------------------
    def _open(self, v: str, blob: bytes) -> bytes:
        cfg = self.config
        ct, sealed = (blob[:KEM_CT_BYTES], blob[KEM_CT_BYTES:]) if cfg.hybrid else (b"", blob)
        try:
            ss = b""
            if cfg.hybrid:
                assert self._kem is not None
                ss = keys.decapsulate(self._kem, ct)
            key = keys.channel_key(self._exchange(v), ss, ct, cfg.round_id, v, self.client_id)
            body = keys.open_sealed(key, sealed, keys.route(cfg.round_id, v, self.client_id))
        except (InvalidTag, ValueError):
            raise _refuse("tampered", f"{self.client_id}: the share from {v} was tampered "
                                      "with") from None
        if len(body) != SHARE_BODY:
            raise _refuse("tampered", f"{self.client_id}: the share from {v} is malformed")
        return body

    def masked_input(self, codes: np.ndarray, sealed: Mapping[str, bytes]) -> np.ndarray:
        """Open the shares neighbours sent (stage 2's output) and mask the ring codes."""
        self._enter("consistency", "masked")
        cfg = self.config
        ring = cfg.ring
        if (codes.shape != (cfg.size,) or codes.dtype != np.uint64
                or (codes.size and int(codes.max()) > ring.levels)):
            raise SecAggAbort(f"{self.client_id}: {cfg.size} ring codes below 2^q expected")
        mine = set(self._neighbours)
        for v, blob in sealed.items():
            if v not in mine:
                raise _refuse("routing", f"{self.client_id}: a share from non-neighbour "
                                         f"{v!r}")
            body = self._open(v, blob)
            self._held[v] = (int.from_bytes(body[:66], "big"), int.from_bytes(body[66:], "big"))
        if len(self._held) < cfg.threshold:
            raise SecAggAbort(f"{self.client_id}: shares from {len(self._held)} neighbours, "
                              f"{cfg.threshold} needed")
        y = codes.astype("<u8")  # a copy; masks add modulo 2^64, reduced once at the end
        scratch = np.empty(cfg.size, "<u8")
        prg.add(y, self._b, scratch)
        assert self._s_key is not None
        for v in self._held:  # the neighbours that completed stage 2
            prg.add(y, _mask_seed(self._s_key, self._adverts[v].s_pk, cfg.round_id), scratch,
                    subtract=_pair_sign(self.client_id, v) < 0)
        y &= ring.mask
        return y

    # -- 4. consistency --------------------------------------------------------------------
    def consistency(self, survivors: Iterable[str]) -> bytes:
        """Sign the survivor set U3 the server announced (once: a second, different set
        is refused)."""
        cfg = self.config
        u3 = frozenset(survivors)
        if self._survivors is not None:
            if u3 != self._survivors:
                raise _refuse("consistency", f"{self.client_id}: the server announced two "
                                             "different survivor sets")
        else:
            self._enter("unmask", "consistency")
        if self.client_id not in u3:
            raise _refuse("consistency", f"{self.client_id} is not among the survivors")
        if not u3 <= set(self._adverts):
            raise _refuse("consistency", "survivors that never advertised keys")
        if len(u3) < cfg.min_survivors:
            raise _refuse("dropouts", f"{len(u3)} of {len(cfg.cohort)} clients survive; "
                                      f"δ = {cfg.dropout} allows no fewer than "
                                      f"{cfg.min_survivors}")
        self._survivors = u3
        return self.identity.sign(CONSISTENCY, consistency_message(cfg.round_id, self._seed,
                                                                   u3))

    # -- 5. unmask -------------------------------------------------------------------------
    def unmask(self, signatures: Mapping[str, bytes]) -> dict[str, tuple[str, int]]:
        """After t neighbours signed the same survivor set: for each neighbour whose
        shares we hold, (which secret, our share of it)."""
        self._enter("done", "unmask")
        cfg = self.config
        u3 = self._survivors
        assert u3 is not None
        msg = consistency_message(cfg.round_id, self._seed, u3)
        agreeing = 0
        for v in self._neighbours:
            sig = signatures.get(v)
            if sig is None or v not in u3:
                continue
            try:
                verify(self._adverts[v].cert, CONSISTENCY, msg, sig)
            except IdentityError:
                continue
            agreeing += 1
        if agreeing < cfg.threshold:
            raise _refuse("consistency", f"{self.client_id}: {agreeing} neighbours signed "
                                         f"this survivor set, {cfg.threshold} needed: the "
                                         "server may have told clients different sets")
        out = {}
        for v, (b_share, s_share) in self._held.items():
            kind = "b" if v in u3 else "s"
            if self._revealed.setdefault(v, kind) != kind:
                raise _refuse("consistency", f"refusing to reveal both secrets of {v}")
            out[v] = (kind, b_share if kind == "b" else s_share)
        return out


class SecAggServer:
    """The server's side: routes, checks shapes and signatures (so one bad client does
    not make the honest ones abort), unmasks the sum."""

    def __init__(self, config: RoundConfig):
        self.config = config
        self.adverts: dict[str, Advert] = {}  # U1
        self.eks: dict[str, bytes] = {}
        self.seed: bytes | None = None
        self._wire: dict[str, dict[str, Any]] = {}
        self.shared: dict[str, dict[str, bytes]] = {}  # U2: u -> v -> sealed
        self.masked: dict[str, np.ndarray] = {}  # U3
        self.signatures: dict[str, bytes] = {}  # U4
        self.responses: dict[str, dict[str, tuple[str, int]]] = {}  # U5

    def receive_advert(self, client: str, payload: Mapping[str, Any]) -> None:
        cfg = self.config
        if client not in cfg.cohort:
            raise SecAggAbort(f"{client!r} is not in the cohort")
        if self.seed is not None:
            raise SecAggAbort("the advertise stage is over")
        try:
            ad = Advert.from_wire(client, payload)
            ad.verify(cfg.round_id)
        except IdentityError as exc:
            raise SecAggAbort(f"advertisement of {client!r}: {exc}") from None
        ek = payload.get("ek", b"")
        if cfg.hybrid:
            if (not isinstance(ek, bytes) or len(ek) != EK_BYTES
                    or hashlib.sha256(ek).digest() != ad.ek_hash):
                raise SecAggAbort(f"advertisement of {client!r}: the ML-KEM-768 key is "
                                  "missing or not the signed one")
            self.eks[client] = ek
        elif ek or ad.ek_hash:
            raise SecAggAbort(f"advertisement of {client!r}: an ML-KEM key in a round "
                              "that uses x25519 alone")
        for other in self.adverts.values():
            if ad.c_pk in (other.c_pk, other.s_pk) or ad.s_pk in (other.c_pk, other.s_pk):
                raise SecAggAbort(f"{client!r} advertised another client's key")
        self.adverts[client] = ad

    def close_adverts(self) -> bytes:
        """End of stage 1: the graph seed (every device derives the same)."""
        cfg = self.config
        if len(self.adverts) < cfg.min_survivors:
            raise SecAggAbort(f"{len(self.adverts)} clients advertised keys, "
                              f"{cfg.min_survivors} needed (δ = {cfg.dropout})")
        self.seed = graph_seed(cfg.round_id, self.adverts)
        self._wire = {v: ad.to_wire() for v, ad in self.adverts.items()}
        return self.seed

    def adverts_for(self, client: str) -> dict[str, Any]:
        """Stage 2's input for ``client``: every advertisement, its neighbours' KEM keys."""
        assert self.seed is not None
        near = self.config.graph(self.seed)[client]
        return {"ads": self._wire,
                "eks": {v: self.eks[v] for v in near if v in self.eks}}

    def receive_shares(self, client: str, sealed: Mapping[str, bytes]) -> None:
        if client not in self.adverts or self.seed is None:
            raise SecAggAbort(f"{client!r} sent shares without keys")
        near = set(self.config.graph(self.seed)[client])
        if not set(sealed) <= near & set(self.adverts):
            raise SecAggAbort(f"{client!r} sent shares to non-neighbours")
        length = 12 + SHARE_BODY + 16 + (KEM_CT_BYTES if self.config.hybrid else 0)
        if any(len(b) != length for b in sealed.values()):
            raise SecAggAbort(f"{client!r}: a sealed share is {length} bytes")
        self.shared[client] = dict(sealed)

    def shares_for(self, client: str) -> dict[str, bytes]:
        """What stage 3 hands ``client``: the sealed shares its neighbours sent it."""
        return {u: s[client] for u, s in self.shared.items() if client in s}

    def receive_masked(self, client: str, y: np.ndarray) -> None:
        if client not in self.shared:
            raise SecAggAbort(f"{client!r} sent a masked input without sharing keys")
        if y.shape != (self.config.size,) or y.dtype != np.uint64 or (
                y > self.config.ring.mask).any():
            raise SecAggAbort(f"{client!r}: a masked input must be {self.config.size} ring "
                              "elements")
        self.masked[client] = y

    def unmask_request(self) -> list[str]:
        """End of stage 3: the survivors U3 everyone is asked to sign."""
        if len(self.masked) < self.config.min_survivors:
            raise SecAggAbort(f"{len(self.masked)} masked inputs, "
                              f"{self.config.min_survivors} needed (δ = "
                              f"{self.config.dropout})")
        return sorted(self.masked)

    def receive_signature(self, client: str, signature: bytes) -> None:
        if client not in self.masked or self.seed is None:
            raise SecAggAbort(f"{client!r} is not a survivor")
        try:
            verify(self.adverts[client].cert, CONSISTENCY,
                   consistency_message(self.config.round_id, self.seed, self.masked),
                   signature)
        except IdentityError as exc:
            raise SecAggAbort(f"{client!r}: {exc}") from None
        self.signatures[client] = signature

    def close_consistency(self) -> None:
        if len(self.signatures) < self.config.threshold:
            raise SecAggAbort(f"{len(self.signatures)} survivors signed, "
                              f"{self.config.threshold} needed")

    def signatures_for(self, client: str) -> dict[str, bytes]:
        assert self.seed is not None
        return {v: self.signatures[v] for v in self.config.graph(self.seed)[client]
                if v in self.signatures}

    def receive_unmask(self, client: str, shares: Mapping[str, tuple[str, int]]) -> None:
        if client not in self.signatures:
            raise SecAggAbort(f"{client!r} did not sign the survivor set")
        self.responses[client] = dict(shares)

    def _rebuild(self, u: str, kind: str) -> bytes:
        shares = {self.config.point(v): r[u][1] for v, r in self.responses.items()
                  if u in r and r[u][0] == kind}
        if len(shares) < self.config.threshold:
            raise SecAggAbort(f"only {len(shares)} shares to unmask {u} "
                              f"({self.config.threshold} needed): too many dropouts")
        try:
            return shamir.combine(shares, self.config.threshold)
        except shamir.ShamirError as exc:
            raise SecAggAbort(f"unmasking {u}: {exc}") from None

    def result(self) -> tuple[np.ndarray, list[str]]:
        """Σ c_u over the survivors (exact integers mod 2^b) and who they are."""
        assert self.seed is not None
        survivors, dropped = set(self.masked), set(self.shared) - set(self.masked)
        ring, n = self.config.ring, self.config.size
        total = np.zeros(n, "<u8")
        for y in self.masked.values():
            total += y
        scratch = np.empty(n, "<u8")
        for u in sorted(survivors):
            prg.add(total, self._rebuild(u, "b"), scratch, subtract=True)
        near = self.config.graph(self.seed)
        for u in sorted(dropped):
            s_sk = keys.private_key(self._rebuild(u, "s"))
            for v in near[u]:
                if v in survivors and v in self.shared[u]:
                    # v added sign(v, u)·m; take it away
                    prg.add(total, _mask_seed(s_sk, self.adverts[v].s_pk, self.config.round_id),
                            scratch, subtract=_pair_sign(v, u) > 0)
        total &= ring.mask
        return total.astype(np.uint64, copy=False), sorted(survivors)
