"""Key agreement and authenticated encryption between clients (through the server).

X25519 Diffie–Hellman, HKDF-SHA256 to a purpose-bound 32-byte key, AES-256-GCM for the
key shares a client routes to its neighbours through the server (which cannot read them).
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def new_keypair() -> tuple[bytes, bytes]:
    """(private, public), 32 raw bytes each."""
    sk = X25519PrivateKey.generate()
    raw = sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                           serialization.NoEncryption())
    return raw, public_of(raw)


def public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_key(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def agree(private: bytes | X25519PrivateKey, peer_public: bytes, purpose: bytes) -> bytes:
    """A 32-byte key both sides derive; ``purpose`` separates uses of one key pair."""
    sk = private if isinstance(private, X25519PrivateKey) else private_key(private)
    shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"tsfl-secagg:" + purpose).derive(shared)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """The plaintext; ``cryptography.exceptions.InvalidTag`` if it was tampered with."""
    return AESGCM(key).decrypt(sealed[:12], sealed[12:], associated)
