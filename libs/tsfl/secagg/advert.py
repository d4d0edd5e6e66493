"""Signed SecAgg+ messages: the key advertisement and the consistency signature.

Against an active server (Bonawitz et al. 2017, the signed AdvertiseKeys and
ConsistencyCheck rounds of its active-adversary protocol; Bell et al. 2020's malicious
setting), every key a client uses must come from the
client it claims to: each device signs its advertisement with its long-term identity key
(:mod:`tsfl.identity`), and a peer uses a key only if the certificate chains to an
authority *the peer* trusts (not one the server names) and the signature verifies.

- **Advertisement** (stage 1): ``Sign_u("tsfl-secagg-advertise", r ‖ u ‖ c_pk ‖ s_pk ‖
  H(ek))`` — r the round id, H(ek) the SHA-256 of the ML-KEM encapsulation key in the
  hybrid mode (empty otherwise), all length-prefixed.
- **Graph seed**: ``SHA-256("tsfl-secagg-graph" ‖ r ‖ Σ_{u ∈ U1, sorted} u ‖ H(ad_u))``
  over every advertisement of the round — fixed only once the keys are, so a server
  cannot pick the neighbourhoods (it can only choose which clients to drop, which
  devices bound by δ; see docs/secagg.md).
- **Consistency** (before unmasking): ``Sign_u("tsfl-secagg-consistency", r ‖ seed ‖
  H(sorted U3))``: a device reveals shares only after t of its neighbours signed the
  *same* survivor set under the same graph.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tsfl.identity import (
    DeviceIdentity,
    IdentityCertificate,
    IdentityError,
    verify,
    verify_certificate,
)

ADVERTISE = b"tsfl-secagg-advertise"
CONSISTENCY = b"tsfl-secagg-consistency"


def _field(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def advert_message(round_id: bytes, device_id: str, c_pk: bytes, s_pk: bytes,
                   ek_hash: bytes) -> bytes:
    return b"".join(_field(x) for x in (round_id, device_id.encode(), c_pk, s_pk, ek_hash))


@dataclass(frozen=True)
class Advert:
    """One device's public keys for a round, signed, with its identity certificate."""

    device_id: str
    c_pk: bytes  # X25519: the share channel
    s_pk: bytes  # X25519: pairwise masks
    ek_hash: bytes  # SHA-256 of the ML-KEM-768 encapsulation key (b"" without it)
    signature: bytes
    cert: IdentityCertificate

    @classmethod
    def create(cls, identity: DeviceIdentity, round_id: bytes, c_pk: bytes, s_pk: bytes,
               ek_hash: bytes = b"") -> Advert:
        msg = advert_message(round_id, identity.device_id, c_pk, s_pk, ek_hash)
        return cls(identity.device_id, c_pk, s_pk, ek_hash, identity.sign(ADVERTISE, msg),
                   identity.certificate)

    def verify(self, round_id: bytes) -> None:
        """The signature under the certificate's key, for this round and this device
        (the certificate's authority is :class:`Trust`'s business)."""
        if self.cert.device_id != self.device_id:
            raise IdentityError(f"the certificate is for {self.cert.device_id!r}, the "
                                f"advertisement for {self.device_id!r}")
        verify(self.cert, ADVERTISE, advert_message(round_id, self.device_id, self.c_pk,
                                                    self.s_pk, self.ek_hash),
               self.signature)

    def digest(self) -> bytes:
        return hashlib.sha256(b"".join(_field(x) for x in (
            self.device_id.encode(), self.c_pk, self.s_pk, self.ek_hash, self.signature,
            self.cert.public_key, self.cert.authority, self.cert.signature))).digest()

    def to_wire(self) -> dict[str, Any]:
        return {"c": self.c_pk, "s": self.s_pk, "ekh": self.ek_hash, "sig": self.signature,
                "cert": self.cert.to_wire()}

    @classmethod
    def from_wire(cls, device_id: str, raw: Any) -> Advert:
        """Shape checks only (then :meth:`verify` and :meth:`Trust.check`)."""
        if not isinstance(raw, Mapping):
            raise IdentityError(f"advertisement of {device_id!r} is not a map")
        c, s, ekh, sig = raw.get("c"), raw.get("s"), raw.get("ekh", b""), raw.get("sig")
        for name, value, sizes in (("c", c, (32,)), ("s", s, (32,)), ("ekh", ekh, (0, 32)),
                                   ("sig", sig, (64,))):
            if not isinstance(value, bytes | bytearray) or len(value) not in sizes:
                raise IdentityError(f"advertisement of {device_id!r}: {name} must be "
                                    f"{' or '.join(map(str, sizes))} bytes")
        return cls(device_id, bytes(c), bytes(s), bytes(ekh), bytes(sig),  # type: ignore[arg-type]
                   IdentityCertificate.from_wire(raw.get("cert")))


class Trust:
    """The identity authorities a device trusts (its own configuration, never the
    server's), and the certificates already checked against them (certificates are
    long-lived: a device checks each once, not every round)."""

    def __init__(self, authorities: Iterable[bytes]):
        self.authorities = frozenset(bytes(a) for a in authorities)
        self._good: set[IdentityCertificate] = set()

    def __bool__(self) -> bool:
        return bool(self.authorities)

    def check(self, cert: IdentityCertificate, device_id: str) -> None:
        if cert in self._good and cert.device_id == device_id:
            return
        verify_certificate(cert, self.authorities, device_id)
        self._good.add(cert)


def graph_seed(round_id: bytes, adverts: Mapping[str, Advert]) -> bytes:
    """The round's 32-byte graph seed from every advertisement of U1."""
    h = hashlib.sha256(b"tsfl-secagg-graph" + _field(round_id))
    for u in sorted(adverts):
        h.update(_field(u.encode()) + adverts[u].digest())
    return h.digest()


def consistency_message(round_id: bytes, seed: bytes, survivors: Iterable[str]) -> bytes:
    listing = hashlib.sha256(b"".join(_field(u.encode()) for u in sorted(survivors)))
    return _field(round_id) + _field(seed) + listing.digest()
