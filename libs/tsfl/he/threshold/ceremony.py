"""The key ceremony: n silos make a collective key and t-of-n shares of its secret with
nobody — the server that relays their messages included — ever holding the secret.

Two broadcast steps through an untrusted relay (the server, or any bulletin board), each
message signed with the silo's identity key (:mod:`tsfl.identity`) and checked by every
peer against its own trusted authorities:

1. **advertise**: device id, Shamir point x (1-based rank of the id among the
   participants), an X25519 key and a 32-byte nonce. The CRS seed is SHA-256 of all
   advertisements (contributory: no single party, the relay included, picks a).
2. **deal** (Mouchet et al. 2021 Protocol 1; Mouchet et al. 2022 §4): p0_i = −a·s_i + e_i
   in the clear, and for each peer j the Shamir share f_i(x_j) of s_i together with a
   32-byte output-key contribution k_i, sealed with AES-256-GCM under the X25519 + HKDF
   key of (i, j) (:mod:`tsfl.secagg.keys`), bound to (job, CRS seed, i, j). The signature
   covers the digest of every sealed share, so a relay may hand each recipient only its
   own share and the others' digests (:func:`for_recipient`): what a silo receives is
   exactly what the dealer signed.

**finish**: silo j opens what was sealed to it and keeps S_j = Σ_i f_i(x_j) and the
output key K = SHA-256(k_1 ‖ … ‖ k_n); everyone computes pk0 = Σ p0_i and the key id.
**confirm**: each silo signs the key id it derived (:meth:`CeremonyParty.confirm`) and
checks every participant's confirmation (:func:`check_confirmations`): a relay that
showed different messages to different silos yields different key ids, and every honest
silo sees that before a round begins. The relay computes the collective public key from
the transcript too (:func:`public_key`): it holds nothing that decrypts.

Not covered: a malicious *silo* can deal inconsistent shares (no verifiable secret
sharing) — decryption then fails, it does not leak; every participant must take part.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag

from tsfl.he.errors import HeError
from tsfl.he.threshold import scheme
from tsfl.he.threshold.keys import (
    CollectivePublicKey,
    KeyShare,
    Participant,
    poly_bytes,
    poly_from,
)
from tsfl.he.threshold.params import ThresholdParams
from tsfl.he.threshold.sampling import Prg
from tsfl.identity import (
    DeviceIdentity,
    IdentityCertificate,
    IdentityError,
    verify,
    verify_certificate,
)

ADVERTISE = b"tsfl-he-keygen-advertise"
DEAL = b"tsfl-he-keygen-deal"
CONFIRM = b"tsfl-he-keygen-confirm"
#: AES-GCM nonce and tag around a sealed share
SEAL_OVERHEAD = 12 + 16


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _sealing() -> Any:
    """X25519 + HKDF + AES-GCM (:mod:`tsfl.secagg.keys`), imported when a ceremony runs."""
    from tsfl.secagg import keys

    return keys


def sealed_share_bytes(params: ThresholdParams) -> int:
    """The size of one sealed share: a polynomial, the 32-byte contribution, GCM."""
    return 4 * params.limbs * params.poly_degree + 32 + SEAL_OVERHEAD


def advert_body(label: str, msg: Mapping[str, Any]) -> list[Any]:
    return [label, msg.get("id"), msg.get("x"), msg.get("dh"), msg.get("nonce")]


def deal_body(label: str, crs: bytes, sender: str, p0: bytes,
              digests: Mapping[str, bytes]) -> list[Any]:
    return [label, crs, sender, _digest(p0), sorted(digests.items())]


def confirm_body(label: str, key_id: str) -> bytes:
    return msgpack.packb([label, key_id])


def crs_seed(label: str, adverts: Mapping[str, Mapping[str, Any]], ids: Iterable[str]
             ) -> bytes:
    """SHA-256 of every participant's advertisement (in id order)."""
    h = hashlib.sha256(b"tsfl-he-crs-seed\x00" + label.encode())
    for device_id in ids:
        m = adverts[device_id]
        h.update(msgpack.packb([device_id, m["dh"], m["nonce"]]))
    return h.digest()


def check_signed(msg: Any, purpose: bytes, body: list[Any], trusted: Iterable[bytes],
                 ids: list[str]) -> tuple[str, IdentityCertificate]:
    """(device id, certificate) of a ceremony message signed by a participant under a
    trusted authority; else :class:`HeError` ``identity``."""
    try:
        device_id = str(msg["id"])
        cert = IdentityCertificate.from_wire(msg["c"])
        verify_certificate(cert, trusted, device_id)
        verify(cert, purpose, msgpack.packb(body), msg["s"])
    except (KeyError, TypeError, IdentityError) as exc:
        raise HeError("identity", f"key ceremony: {exc}") from None
    if device_id not in ids:
        raise HeError("identity", f"key ceremony: {device_id!r} is not a participant")
    return device_id, cert


def deal_digests(msg: Mapping[str, Any]) -> dict[str, bytes]:
    """The digests of a deal's sealed shares, from its full or per-recipient form."""
    sealed = msg.get("shares")
    if isinstance(sealed, dict):
        if not all(isinstance(b, bytes) for b in sealed.values()):
            raise HeError("key", "key ceremony: malformed deal")
        return {str(p): _digest(b) for p, b in sealed.items()}
    digests = msg.get("digests")
    if not isinstance(digests, dict) or not all(
            isinstance(d, bytes) and len(d) == 32 for d in digests.values()):
        raise HeError("key", "key ceremony: malformed deal")
    return {str(p): d for p, d in digests.items()}


def for_recipient(deal: Mapping[str, Any], recipient: str) -> dict[str, Any]:
    """The part of a (full) deal ``recipient`` needs: the public share, the share sealed
    to it, the digests the dealer signed. The dealer's own deal keeps no sealed share."""
    sealed = deal["shares"]
    out = {k: deal[k] for k in ("id", "p0", "c", "s")}
    out["digests"] = {p: _digest(b) for p, b in sealed.items()}
    out["share"] = sealed.get(recipient)
    return out


def public_key(label: str, params: ThresholdParams, ids: list[str],
               adverts: Mapping[str, Mapping[str, Any]], deals: Mapping[str, Mapping[str, Any]],
               trusted: Iterable[bytes]) -> CollectivePublicKey:
    """The collective public key from a checked transcript (the relay's view): nothing
    in it decrypts."""
    crs = crs_seed(label, adverts, ids)
    certs = {i: IdentityCertificate.from_wire(adverts[i]["c"]) for i in ids}
    pk0 = scheme.collective_key(params, [poly_from(deals[i]["p0"], params) for i in ids])
    return CollectivePublicKey(label, params, crs, pk0,
                               tuple(Participant(i, ids.index(i) + 1, certs[i]) for i in ids),
                               tuple(trusted))


def check_confirmations(share: KeyShare, confirmations: Iterable[Any]) -> None:
    """Every participant signed the key id this silo derived; else :class:`HeError`
    ``identity`` naming the first that did not (the relay showed silos different
    ceremony messages, or one of them derived another key)."""
    public = share.public
    got: dict[str, str] = {}
    for msg in confirmations:
        try:
            device_id = str(msg["id"])
            member = public.participant(device_id)
            if IdentityCertificate.from_wire(msg["c"]) != member.certificate:
                raise IdentityError(f"{device_id!r} confirms with another certificate")
            key_id = str(msg["k"])
            verify(member.certificate, CONFIRM, confirm_body(public.label, key_id), msg["s"])
        except (KeyError, TypeError, IdentityError, HeError) as exc:
            raise HeError("identity", f"key ceremony: confirmation refused: {exc}") from None
        got[device_id] = key_id
    for p in public.participants:
        if p.device_id not in got:
            raise HeError("key", f"key ceremony: no confirmation from {p.device_id!r}")
        if got[p.device_id] != share.key_id:
            raise HeError("identity", (
                f"key ceremony: {p.device_id!r} derived key {got[p.device_id][:16]}, this "
                f"silo {share.key_id[:16]}: the relay showed the silos different messages"))


class CeremonyParty:
    """One silo's side of the ceremony for ``label`` among ``participants`` (device ids)."""

    def __init__(self, identity: DeviceIdentity, params: ThresholdParams, label: str,
                 participants: Iterable[str], trusted: Iterable[bytes]):
        self.identity = identity
        self.params = params
        self.label = label
        self.ids = sorted(set(participants))
        if identity.device_id not in self.ids:
            raise HeError("key", f"{identity.device_id!r} is not a participant")
        if len(self.ids) != params.parties:
            raise HeError("key", f"{len(self.ids)} participants, the parameters are for "
                                 f"{params.parties}")
        self.trusted = tuple(trusted)
        self.x = self.ids.index(identity.device_id) + 1
        self._dh_private, self._dh_public = _sealing().new_keypair()
        self._nonce = os.urandom(32)
        self._prg = Prg.fresh()
        self._certs: dict[str, IdentityCertificate] = {}
        self._adverts: dict[str, dict[str, Any]] = {}
        self._crs: bytes | None = None
        self._own: tuple[Any, bytes] | None = None

    def _x(self, device_id: str) -> int:
        return self.ids.index(device_id) + 1

    # -- step 1 ------------------------------------------------------------------------------
    def advertise(self) -> dict[str, Any]:
        me = self.identity.device_id
        msg = {"id": me, "x": self.x, "dh": self._dh_public, "nonce": self._nonce,
               "c": self.identity.certificate.to_wire()}
        msg["s"] = self.identity.sign(ADVERTISE, msgpack.packb(advert_body(self.label, msg)))
        return msg

    def _check_signer(self, msg: dict[str, Any], purpose: bytes, body: list[Any]) -> str:
        device_id, cert = check_signed(msg, purpose, body, self.trusted, self.ids)
        known = self._certs.setdefault(device_id, cert)
        if known != cert:
            raise HeError("identity", f"key ceremony: {device_id!r} changed its certificate")
        return device_id

    # -- step 2 ------------------------------------------------------------------------------
    def deal(self, adverts: Iterable[dict[str, Any]]) -> dict[str, Any]:
        for msg in adverts:
            device_id = self._check_signer(msg, ADVERTISE, advert_body(self.label, msg))
            if msg.get("x") != self._x(device_id):
                raise HeError("identity", f"key ceremony: {device_id!r} claims point "
                                          f"{msg.get('x')!r}")
            seen = self._adverts.setdefault(device_id, msg)
            if seen is not msg and seen != msg:
                raise HeError("identity", f"key ceremony: two advertisements of "
                                          f"{device_id!r}")
        missing = set(self.ids) - set(self._adverts)
        if missing:
            raise HeError("key", f"key ceremony: no advertisement from {sorted(missing)}")
        self._crs = crs_seed(self.label, self._adverts, self.ids)
        p = self.params
        s = scheme.secret_polynomial(p, self._prg)
        p0 = scheme.public_share(p, scheme.common_polynomial(p, self._crs), s, self._prg)
        shares = scheme.shamir_shares(p, s, [self._x(i) for i in self.ids], self._prg)
        contribution = os.urandom(32)
        me = self.identity.device_id
        self._own = (shares[self.x], contribution)
        sealed = {}
        box = _sealing()
        for peer in self.ids:
            if peer == me:
                continue
            key = box.agree(self._dh_private, self._adverts[peer]["dh"], b"he-keygen")
            plain = poly_bytes(shares[self._x(peer)]) + contribution
            sealed[peer] = box.seal(key, plain, msgpack.packb([self.label, self._crs, me,
                                                               peer]))
        p0_bytes = poly_bytes(p0)
        body = deal_body(self.label, self._crs, me, p0_bytes,
                         {peer: _digest(blob) for peer, blob in sealed.items()})
        return {"id": me, "p0": p0_bytes, "shares": sealed,
                "c": self.identity.certificate.to_wire(),
                "s": self.identity.sign(DEAL, msgpack.packb(body))}

    # -- finish ------------------------------------------------------------------------------
    def finish(self, deals: Iterable[dict[str, Any]]) -> KeyShare:
        """This silo's share, from every participant's deal (full, or the per-recipient
        form of :func:`for_recipient`)."""
        if self._crs is None or self._own is None:
            raise HeError("key", "key ceremony: finish before deal")
        me = self.identity.device_id
        p = self.params
        p0s: dict[str, bytes] = {}
        received = [self._own[0]]
        contributions = {me: self._own[1]}
        for msg in deals:
            if not isinstance(msg, dict) or not isinstance(msg.get("p0"), bytes):
                raise HeError("key", "key ceremony: malformed deal")
            digests = deal_digests(msg)
            sender = self._check_signer(msg, DEAL, deal_body(
                self.label, self._crs, str(msg.get("id")), msg["p0"], digests))
            if sender in p0s:
                raise HeError("identity", f"key ceremony: two deals of {sender!r}")
            poly_from(msg["p0"], p)  # reduced residues of the right shape
            p0s[sender] = msg["p0"]
            if sender == me:
                continue
            if set(digests) != set(self.ids) - {sender}:
                raise HeError("key", f"key ceremony: {sender!r} did not deal to everyone")
            sealed = msg.get("shares")
            blob = sealed.get(me) if isinstance(sealed, dict) else msg.get("share")
            if not isinstance(blob, bytes) or _digest(blob) != digests[me]:
                raise HeError("identity", f"key ceremony: the share from {sender!r} is not "
                                          "the one it signed")
            box = _sealing()
            key = box.agree(self._dh_private, self._adverts[sender]["dh"], b"he-keygen")
            try:
                plain = box.open_sealed(key, blob, msgpack.packb(
                    [self.label, self._crs, sender, me]))
            except (InvalidTag, ValueError):
                raise HeError("key", f"key ceremony: the share from {sender!r} does not "
                                     "open") from None
            received.append(poly_from(plain[:-32], p))
            contributions[sender] = plain[-32:]
        missing = set(self.ids) - set(p0s)
        if missing:
            raise HeError("key", f"key ceremony: no deal from {sorted(missing)}")
        public = public_key(self.label, p, self.ids, self._adverts,
                            {i: {"p0": p0s[i]} for i in self.ids}, self.trusted)
        output = hashlib.sha256(b"tsfl-he-output-key\x00" + self._crs + b"".join(
            contributions[i] for i in self.ids)).digest()
        return KeyShare(public, me, self.x, scheme.combine_shares(p, received), output)

    # -- confirm -----------------------------------------------------------------------------
    def confirm(self, share: KeyShare) -> dict[str, Any]:
        """This silo's signed statement of the key id it derived."""
        return {"id": share.device_id, "k": share.key_id,
                "c": self.identity.certificate.to_wire(),
                "s": self.identity.sign(CONFIRM, confirm_body(self.label, share.key_id))}


def run_ceremony(parties: list[CeremonyParty]) -> tuple[list[KeyShare], dict[str, Any]]:
    """Run the ceremony in one process through a relay that sees (and returns as the
    transcript) every message: what the server would hold after relaying it."""
    adverts = [party.advertise() for party in parties]
    deals = [party.deal(adverts) for party in parties]
    shares = [party.finish(deals) for party in parties]
    confirmations = [party.confirm(share) for party, share in zip(parties, shares,
                                                                   strict=True)]
    for share in shares:
        check_confirmations(share, confirmations)
    return shares, {"advertise": adverts, "deal": deals, "confirm": confirmations}
