"""The prime-order group of the PSI: the order-ℓ subgroup of edwards25519, via libsodium.

ℓ = 2^252 + 27742317777372353535851937790883648493. Elements travel as their 32-byte
canonical encodings. Every element received from another party goes through
``crypto_scalarmult_ed25519_noclamp``, which refuses a non-canonical encoding, a point off
the curve, a point of small order, a point outside the order-ℓ subgroup and an identity
result (libsodium ``crypto_scalarmult/ed25519/ref10``), so a peer cannot move the protocol
out of the prime-order group (small-subgroup attacks, Lim & Lee, CRYPTO 1997).

Hashing to the group: domain-separated SHA-512 of ``(salt, id)`` into libsodium's
``crypto_core_ed25519_from_hash`` — two Elligator 2 maps added and the cofactor cleared, the
random-oracle construction of RFC 9380 §3 (``hash_to_curve``) for edwards25519 — so nobody
knows the discrete logarithm of H(id).

PyNaCl exposes neither ristretto255 (its bundled libsodium is built minimal) nor
``from_hash``; the exported symbols of its shared object (or a system libsodium) are called
through ctypes, which releases the GIL, so batches run on several threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import secrets
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from tsfl.errors import TsflError

POINT_BYTES = 32
SCALAR_BYTES = 32
#: the group order ℓ
ORDER = 2**252 + 27742317777372353535851937790883648493
MAX_ID_BYTES = 256
DST = b"TSFL-PSI-V1-edwards25519_XMD:SHA-512_ELL2_RO_"


class GroupError(TsflError, ValueError):
    """A value that is not a valid element of the prime-order group (or a bad scalar)."""


@functools.cache
def _lib() -> ctypes.CDLL:
    candidates: list[str] = []
    try:
        import nacl._sodium as sodium  # the wheel's bundled libsodium

        candidates.append(sodium.__file__)
    except ImportError:  # pragma: no cover - PyNaCl is a dependency
        pass
    system = ctypes.util.find_library("sodium")
    if system:
        candidates.append(system)
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            _ = lib.crypto_core_ed25519_from_hash, lib.crypto_scalarmult_ed25519_noclamp
        except (OSError, AttributeError):
            continue
        if lib.sodium_init() < 0:
            continue
        for name in ("crypto_core_ed25519_from_hash", "crypto_scalarmult_ed25519_noclamp",
                     "crypto_core_ed25519_is_valid_point"):
            getattr(lib, name).restype = ctypes.c_int
        return lib
    raise RuntimeError("no libsodium with crypto_core_ed25519_from_hash found "
                       "(install PyNaCl ≥ 1.4 or libsodium ≥ 1.0.18)")


def random_scalar() -> bytes:
    """A uniform non-zero scalar mod ℓ from the OS CSPRNG (little-endian, 32 bytes)."""
    while True:
        k = int.from_bytes(secrets.token_bytes(64), "little") % ORDER
        if k:
            return k.to_bytes(SCALAR_BYTES, "little")


def invert_scalar(k: bytes) -> bytes:
    """k^-1 mod ℓ."""
    v = int.from_bytes(k, "little") % ORDER
    if not v:
        raise GroupError("zero scalar")
    return pow(v, -1, ORDER).to_bytes(SCALAR_BYTES, "little")


def encode_id(item: str | int | bytes) -> bytes:
    """An id as bytes (str: UTF-8, int: its decimal string), bounded."""
    if isinstance(item, bool):
        raise GroupError("ids are strings, integers or bytes, not booleans")
    if isinstance(item, int):
        raw = str(item).encode()
    elif isinstance(item, str):
        raw = item.encode()
    elif isinstance(item, bytes):
        raw = item
    else:
        raise GroupError(f"ids are strings, integers or bytes, not {type(item).__name__}")
    if len(raw) > MAX_ID_BYTES:
        raise GroupError(f"id longer than {MAX_ID_BYTES} bytes")
    return raw


def id_digest(salt: bytes, item: bytes) -> bytes:
    """The 64-byte input of the hash to the group: SHA-512(DST ‖ |salt| ‖ salt ‖ id)."""
    return hashlib.sha512(DST + len(salt).to_bytes(2, "big") + salt + item).digest()


def _chunks(items: Sequence[bytes], workers: int) -> list[Sequence[bytes]]:
    if workers <= 1 or len(items) < 2048:
        return [items]
    step = -(-len(items) // workers)
    return [items[i:i + step] for i in range(0, len(items), step)]


def _parallel(fn: Callable[[Sequence[bytes]], list[bytes]], items: Sequence[bytes],
              workers: int) -> list[bytes]:
    parts = _chunks(items, workers)
    if len(parts) == 1:
        return fn(parts[0])
    with ThreadPoolExecutor(len(parts)) as pool:
        return [p for part in pool.map(fn, parts) for p in part]


def hash_to_group(salt: bytes, ids: Iterable[bytes], workers: int = 1) -> list[bytes]:
    """H(salt, id) for each (already encoded) id."""
    digests = [id_digest(salt, i) for i in ids]
    lib = _lib()

    def run(chunk: Sequence[bytes]) -> list[bytes]:
        out = ctypes.create_string_buffer(POINT_BYTES)
        res = []
        for d in chunk:
            if lib.crypto_core_ed25519_from_hash(out, d) != 0:  # pragma: no cover
                raise GroupError("hash to group failed")
            res.append(out.raw)
        return res

    return _parallel(run, digests, workers)


def multiply(points: Sequence[bytes], scalar: bytes, workers: int = 1) -> list[bytes]:
    """[k]P for each P, refusing anything that is not a non-identity element of the
    order-ℓ subgroup (and an identity result)."""
    if len(scalar) != SCALAR_BYTES:
        raise GroupError("scalar must be 32 bytes")
    lib = _lib()

    def run(chunk: Sequence[bytes]) -> list[bytes]:
        out = ctypes.create_string_buffer(POINT_BYTES)
        res = []
        for p in chunk:
            if len(p) != POINT_BYTES:
                raise GroupError("point must be 32 bytes")
            if lib.crypto_scalarmult_ed25519_noclamp(out, scalar, p) != 0:
                raise GroupError("not an element of the prime-order group (non-canonical, "
                                 "off the curve, small order or identity)")
            res.append(out.raw)
        return res

    return _parallel(run, points, workers)


def is_valid_point(p: bytes) -> bool:
    """Canonical, on the curve, not of small order (libsodium's cheap check; the subgroup
    check happens in :func:`multiply`)."""
    return len(p) == POINT_BYTES and _lib().crypto_core_ed25519_is_valid_point(p) == 1
