"""Signed encrypted sections: who encrypted what, for which job, round and key.

Adversary: whoever can put bytes where the he stage reads them — the encrypted-updates
topic, a compromised edge, the server operator — and would add a ciphertext under another
key labelled with the job's key id, or alter a coefficient, to corrupt the sum (or, under
threshold keying, to make silos decrypt something other than the round's sum).

Every section (both keyings) is framed as ``>I`` header length, a msgpack header, then
the ciphertext bytes. The sending device signs, with its identity key
(:mod:`tsfl.identity`, purpose ``tsfl-he-section``)::

    msgpack([job_id, round, key commitment, digest])
    digest = SHA-256("tsfl-he-section" ‖ msgpack(header without "sig", keys sorted) ‖ bytes)

where the key commitment is the job's ``key_id`` (shared keying: a hash of the secret
key; threshold keying: a hash of the whole collective public key). The header's ``sig``
holds the commitment signed (``k``), the signature (``s``) and the device's certificate
(``c``). A section is refused when it is unsigned (``unsigned``), its certificate is not
from a trusted authority or names another device (``identity``), it was signed for another
key (``key``), or its signature does not verify over the bytes received (``signature``:
tampered or forged). A certified device can still encrypt garbage under the right key:
that is attributable (its signature), not preventable without proofs of plaintext range.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from typing import Any

import msgpack

from tsfl.he.errors import HeError
from tsfl.identity import (
    DeviceIdentity,
    IdentityCertificate,
    IdentityError,
    verify,
    verify_certificate,
)

PURPOSE = b"tsfl-he-section"
_HEAD_LEN = struct.Struct(">I")


def split_frame(data: bytes | memoryview, max_head: int, **limits: int
                ) -> tuple[dict[str, Any], memoryview]:
    """(header, payload view) of a framed section; ``limits`` bound msgpack's parser."""
    view = memoryview(data).cast("B")
    if len(view) < _HEAD_LEN.size:
        raise HeError("sealed", "the encrypted section is shorter than its header")
    (hlen,) = _HEAD_LEN.unpack_from(view)
    if not 0 < hlen <= min(max_head, len(view) - _HEAD_LEN.size):
        raise HeError("sealed", f"encrypted section header length {hlen} is out of bounds")
    try:
        head = msgpack.unpackb(view[_HEAD_LEN.size:_HEAD_LEN.size + hlen], raw=False,
                               **limits)
    except Exception as exc:  # msgpack raises several unrelated types
        raise HeError("sealed", f"unreadable encrypted section header: {exc}") from None
    if not isinstance(head, dict):
        raise HeError("sealed", "the encrypted section header must be a map")
    return head, view[_HEAD_LEN.size + hlen:]


def frame(head: dict[str, Any], payload: bytes | memoryview) -> bytes:
    raw = msgpack.packb(head)
    return b"".join((_HEAD_LEN.pack(len(raw)), raw, payload))


def section_digest(head: dict[str, Any], payload: bytes | memoryview) -> bytes:
    """SHA-256 over the header (but its signature) and the ciphertext bytes."""
    fields = sorted((k, v) for k, v in head.items() if k != "sig")
    h = hashlib.sha256(PURPOSE)
    h.update(msgpack.packb(fields))
    h.update(payload)
    return h.digest()


def signed_message(job_id: str, round_number: int, key_id: str, digest: bytes) -> bytes:
    return msgpack.packb([job_id, round_number, key_id, digest])


def sign_section(identity: DeviceIdentity, data: bytes | memoryview, job_id: str,
                 round_number: int, max_head: int = 1 << 16) -> bytes:
    """``data`` (an unsigned framed section) with the device's signature in its header."""
    head, payload = split_frame(data, max_head)
    key_id = head.get("key")
    if not isinstance(key_id, str):
        raise HeError("sealed", "the section names no key")
    digest = section_digest(head, payload)
    head["sig"] = {"k": key_id, "c": identity.certificate.to_wire(),
                   "s": identity.sign(PURPOSE, signed_message(job_id, round_number, key_id,
                                                              digest))}
    return frame(head, payload)


def check_signature(head: dict[str, Any], payload: bytes | memoryview, *, job_id: str,
                    round_number: int, key_id: str, client_id: str,
                    authorities: Iterable[bytes]) -> tuple[IdentityCertificate, bytes, bytes]:
    """(certificate, digest, signature) of a section that verifies; else HeError."""
    block = head.get("sig")
    if block is None:
        raise HeError("unsigned", "the encrypted section carries no signature")
    if not isinstance(block, dict) or not isinstance(block.get("s"), bytes):
        raise HeError("signature", "the section's signature block is malformed")
    try:
        cert = IdentityCertificate.from_wire(block.get("c"))
        verify_certificate(cert, authorities, client_id)
    except IdentityError as exc:
        raise HeError("identity", f"section signer: {exc}") from None
    if block.get("k") != key_id or head.get("key") != key_id:
        raise HeError("key", (f"section signed for key {block.get('k')!r} and labelled "
                              f"{head.get('key')!r}; the job's key is {key_id!r}"))
    digest = section_digest(head, payload)
    try:
        verify(cert, PURPOSE, signed_message(job_id, round_number, key_id, digest),
               block["s"])
    except IdentityError:
        raise HeError("signature", (f"the section of {client_id!r} does not match its "
                                    "signature (tampered, or signed for another job or "
                                    "round)")) from None
    return cert, digest, bytes(block["s"])


def refusal_code(code: str) -> str:
    """The upload refusal code (and gRPC status key) for an HeError code."""
    return {"key": "he_key", "unsigned": "he_unsigned", "identity": "he_identity",
            "signature": "he_signature"}.get(code, "sealed")
