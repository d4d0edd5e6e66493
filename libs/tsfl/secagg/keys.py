"""Key agreement and authenticated encryption between clients (through the server).

- Pairwise masks: X25519 of the two clients' ``s`` keys, HKDF-SHA256 to a 32-byte seed.
- Share channel (``c`` keys): each client seals the Shamir shares it routes to a
  neighbour through the server with AES-256-GCM. Its key is derived per direction u → v:

  ``x25519``:           K_uv = HKDF(X25519(c_u, c_v),                info = id(r, u, v))
  ``x25519+mlkem768``:  K_uv = HKDF(X25519(c_u, c_v) ‖ ss_uv,        info = id(r, u, v))

  where (ss_uv, ct_uv) = ML-KEM-768.Encaps(ek_v) (FIPS 203) is drawn by the sender and
  ct_uv travels with the sealed share; id(r, u, v) binds the round and both ends (and, in
  the hybrid mode, ct_uv). The hybrid key is secret while *either* X25519 or ML-KEM-768 is
  unbroken — the concatenation combiner of draft-ietf-tls-hybrid-design — so the routed
  shares of b_u and s_u stay sealed against an adversary that records them today and
  breaks X25519 later. What it does *not* cover: the pairwise masks (X25519 of the s
  keys) and the Ed25519 signatures stay classical, so such an adversary who also
  recorded the masked inputs and the unmasking (where the server learns each survivor's
  b_u by design) could strip a survivor's masks. A post-quantum pairwise-mask agreement
  that still lets the server rebuild a dropped client's masks needs a post-quantum
  non-interactive key exchange (or derandomised ML-KEM encapsulation, which the
  ``cryptography`` API does not expose); see docs/secagg.md.
"""

from __future__ import annotations

import os
import struct
from typing import Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.mlkem import (
    MLKEM768PrivateKey,
    MLKEM768PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KeyAgreement = Literal["x25519", "x25519+mlkem768"]
KEY_AGREEMENTS: tuple[KeyAgreement, ...] = ("x25519", "x25519+mlkem768")
EK_BYTES = 1184  # an ML-KEM-768 encapsulation key
KEM_CT_BYTES = 1088  # an ML-KEM-768 ciphertext


def new_keypair() -> tuple[bytes, bytes]:
    """An X25519 (private, public), 32 raw bytes each."""
    sk = X25519PrivateKey.generate()
    raw = sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                           serialization.NoEncryption())
    return raw, public_of(raw)


def public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_key(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def exchange(private: bytes | X25519PrivateKey, peer_public: bytes) -> bytes:
    """The raw X25519 shared secret (derive keys from it, never use it as one)."""
    sk = private if isinstance(private, X25519PrivateKey) else private_key(private)
    return sk.exchange(X25519PublicKey.from_public_bytes(peer_public))


def agree(private: bytes | X25519PrivateKey, peer_public: bytes, purpose: bytes) -> bytes:
    """A 32-byte key both sides derive; ``purpose`` separates uses of one key pair."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"tsfl-secagg:" + purpose).derive(
        exchange(private, peer_public))


def new_kem_keypair() -> tuple[MLKEM768PrivateKey, bytes]:
    """An ML-KEM-768 decapsulation key and its 1184-byte encapsulation key."""
    sk = MLKEM768PrivateKey.generate()
    return sk, sk.public_key().public_bytes_raw()


def encapsulate(ek: bytes) -> tuple[bytes, bytes]:
    """(32-byte shared secret, 1088-byte ciphertext) for the holder of ``ek``."""
    return MLKEM768PublicKey.from_public_bytes(ek).encapsulate()


def decapsulate(sk: MLKEM768PrivateKey, ct: bytes) -> bytes:
    return sk.decapsulate(ct)


def _ident(round_id: bytes, sender: str, receiver: str) -> bytes:
    u, v = sender.encode(), receiver.encode()
    return round_id + struct.pack(">HH", len(u), len(v)) + u + v


def channel_key(x25519_shared: bytes, kem_shared: bytes, kem_ct: bytes, round_id: bytes,
                sender: str, receiver: str) -> bytes:
    """K_uv: the AES-256 key sealing u's shares for v (``kem_shared`` and ``kem_ct``
    empty in the ``x25519`` mode; the ciphertext is bound into the derivation)."""
    mode = b"x25519+mlkem768" if kem_shared else b"x25519"
    return HKDF(hashes.SHA256(), 32, salt=None,
                info=(b"tsfl-secagg:share:" + mode + b":" + _ident(round_id, sender, receiver)
                      + kem_ct)).derive(x25519_shared + kem_shared)


def route(round_id: bytes, sender: str, receiver: str) -> bytes:
    """The associated data binding a sealed share to its round and its two ends."""
    return _ident(round_id, sender, receiver)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """The plaintext; ``cryptography.exceptions.InvalidTag`` if it was tampered with."""
    return AESGCM(key).decrypt(sealed[:12], sealed[12:], associated)
