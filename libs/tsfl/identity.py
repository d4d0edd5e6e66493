"""Long-term device identities: Ed25519 keys certified by an identity authority.

Adversary: the **server operator**, who routes every message of a cryptographic protocol
and could substitute a device's keys with its own (the SecAgg+ key-substitution attack),
relabel one silo's ciphertext as another's, or invent devices. A device signs what it
says in those protocols (advertised keys, the survivor set, HE sections) with its identity
key, and peers accept a signature only under a **certificate** issued by an identity
authority they were configured to trust — an authority the server does not hold (the
organisation's PKI, an enrolment desk, the silo consortium). The server can still drop or
delay messages; it cannot forge or swap them.

A certificate binds ``device_id`` to an Ed25519 public key:
``signature = Sign_authority("tsfl-identity-cert" ‖ len(device_id) ‖ device_id ‖ pk)``.
Every signature a device makes is domain-separated by a ``purpose``
(``Sign(purpose ‖ 0x00 ‖ message)``), so a signature made for one protocol step never
verifies for another. Ed25519 (RFC 8032) through ``cryptography``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from tsfl.errors import ErrorKind, TsflError

MAX_DEVICE_ID = 128
_CERT_DOMAIN = b"tsfl-identity-cert"


class IdentityError(TsflError, ValueError):
    """A certificate or signature that does not verify, or a malformed one."""

    kind = ErrorKind.DENIED


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def fingerprint(public_key: bytes) -> str:
    """A short, printable name for a public key (SHA-256, first 16 hex digits)."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def _cert_message(device_id: str, public_key: bytes) -> bytes:
    ident = device_id.encode()
    return _CERT_DOMAIN + struct.pack(">H", len(ident)) + ident + public_key


def _signed(purpose: bytes, message: bytes) -> bytes:
    if b"\x00" in purpose:
        raise ValueError("a signature purpose may not contain NUL")
    return purpose + b"\x00" + message


def _public(raw: bytes) -> Ed25519PublicKey:
    if not isinstance(raw, bytes | bytearray) or len(raw) != 32:
        raise IdentityError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(bytes(raw))


@dataclass(frozen=True)
class IdentityCertificate:
    """``device_id``'s identity key, vouched for by the authority ``authority``."""

    device_id: str
    public_key: bytes
    authority: bytes
    signature: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.device_id, "pk": self.public_key, "ca": self.authority,
                "sig": self.signature}

    @classmethod
    def from_wire(cls, raw: Any) -> IdentityCertificate:
        """Parse a certificate that came over the network (its shape only; check it
        with :func:`verify_certificate`)."""
        try:
            device_id, pk, ca, sig = raw["id"], raw["pk"], raw["ca"], raw["sig"]
        except (KeyError, TypeError) as exc:
            raise IdentityError(f"malformed identity certificate: {exc}") from None
        if not isinstance(device_id, str) or not 0 < len(device_id) <= MAX_DEVICE_ID:
            raise IdentityError("identity certificate: bad device id")
        for name, value, size in (("pk", pk, 32), ("ca", ca, 32), ("sig", sig, 64)):
            if not isinstance(value, bytes | bytearray) or len(value) != size:
                raise IdentityError(f"identity certificate: {name} must be {size} bytes")
        return cls(device_id, bytes(pk), bytes(ca), bytes(sig))


def verify_certificate(cert: IdentityCertificate, trusted: Iterable[bytes],
                       device_id: str | None = None) -> None:
    """Raise :class:`IdentityError` unless ``cert`` was issued by one of the ``trusted``
    authorities (raw Ed25519 public keys) — and, when given, for ``device_id``."""
    if device_id is not None and cert.device_id != device_id:
        raise IdentityError(f"certificate is for {cert.device_id!r}, not {device_id!r}")
    if cert.authority not in {bytes(t) for t in trusted}:
        raise IdentityError(f"certificate of {cert.device_id!r} is from an untrusted "
                            f"authority {fingerprint(cert.authority)}")
    try:
        _public(cert.authority).verify(cert.signature,
                                       _cert_message(cert.device_id, cert.public_key))
    except InvalidSignature:
        raise IdentityError(f"certificate of {cert.device_id!r} does not verify") from None


def verify(cert: IdentityCertificate, purpose: bytes, message: bytes,
           signature: bytes) -> None:
    """Raise :class:`IdentityError` unless ``signature`` is ``cert``'s device signing
    ``message`` for ``purpose`` (check the certificate itself with
    :func:`verify_certificate`)."""
    if not isinstance(signature, bytes | bytearray) or len(signature) != 64:
        raise IdentityError(f"signature of {cert.device_id!r} is malformed")
    try:
        _public(cert.public_key).verify(bytes(signature), _signed(purpose, message))
    except InvalidSignature:
        raise IdentityError(f"signature of {cert.device_id!r} on {purpose.decode()} "
                            "does not verify") from None


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _read_private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path} does not hold an Ed25519 private key")
    return key


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class IdentityAuthority:
    """Issues identity certificates. Its private key never reaches the server."""

    def __init__(self, key: Ed25519PrivateKey):
        self._key = key
        self.public_key = _raw_public(key.public_key())

    @classmethod
    def generate(cls) -> IdentityAuthority:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | Path) -> IdentityAuthority:
        return cls(_read_private(Path(path)))

    def save(self, path: str | Path) -> None:
        """The private key as PKCS#8 PEM, mode 600; ``path.pub`` holds the public key (hex)."""
        _write_secret(Path(path), _pem(self._key))
        Path(f"{path}.pub").write_text(self.public_key.hex() + "\n")

    def issue(self, device_id: str, public_key: bytes) -> IdentityCertificate:
        if not 0 < len(device_id) <= MAX_DEVICE_ID:
            raise IdentityError("device id must be 1-128 characters")
        _public(public_key)
        return IdentityCertificate(device_id, bytes(public_key), self.public_key,
                                   self._key.sign(_cert_message(device_id, public_key)))


class DeviceIdentity:
    """A device's identity key and its certificate; signs protocol messages."""

    def __init__(self, key: Ed25519PrivateKey, certificate: IdentityCertificate):
        if _raw_public(key.public_key()) != certificate.public_key:
            raise IdentityError("the certificate is not for this key")
        self._key = key
        self.certificate = certificate

    @property
    def device_id(self) -> str:
        return self.certificate.device_id

    @classmethod
    def enrol(cls, device_id: str, authority: IdentityAuthority) -> DeviceIdentity:
        """A fresh key certified by ``authority`` (simulation, tests, and the
        ``tsfl identity issue`` command)."""
        key = Ed25519PrivateKey.generate()
        return cls(key, authority.issue(device_id, _raw_public(key.public_key())))

    def sign(self, purpose: bytes, message: bytes) -> bytes:
        return self._key.sign(_signed(purpose, message))

    def save(self, path: str | Path) -> None:
        """Key and certificate in one file, mode 600 (msgpack)."""
        import msgpack

        _write_secret(Path(path), msgpack.packb({"key": _raw_private(self._key),
                                                 "cert": self.certificate.to_wire()}))

    @classmethod
    def load(cls, path: str | Path) -> DeviceIdentity:
        import msgpack

        raw = Path(path).read_bytes()
        if len(raw) > 4096:
            raise IdentityError(f"{path} is not an identity file (too large)")
        try:
            data = msgpack.unpackb(raw)
            key = Ed25519PrivateKey.from_private_bytes(bytes(data["key"]))
        except Exception as exc:  # any parse failure is the same error
            raise IdentityError(f"{path} is not an identity file: {exc}") from None
        return cls(key, IdentityCertificate.from_wire(data["cert"]))


def read_authority_public(value: str | Path) -> bytes:
    """An authority's public key from hex text or a ``.pub`` file holding it."""
    text = str(value)
    path = Path(text)
    if path.exists():
        text = path.read_text().strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise IdentityError(f"{value!r} is neither a 64-hex-digit key nor a key file") from None
    _public(raw)
    return raw
