"""Two-party ECDH private set intersection, intersection and cardinality-only modes.

The receiver R holds X (the smaller set, typically the label party), the sender S holds Y.
With H the hash to the prime-order group (:mod:`.group`), a and b the parties' secret
scalars, and F_b(v) = H(v)^b (a PRF under DDH in the random-oracle model):

1. R → S ``REQUEST``: {H(x)^a : x ∈ X}, and R's X25519 public key.
2. S → R ``RESPONSE``: {(H(x)^a)^b} (in R's order; shuffled in cardinality mode), and
   T = {trunc(SHA-256(F_b(y)))} for y ∈ Y in a secret random order, and S's public key.
3. R unblinds (H(x)^{ab})^{a^-1} = F_b(x) and looks each up in T (Meadows 1986;
   Huberman, Franklin & Hogg 1999; the unbalanced form of Kiss et al., PETS 2017, and
   Jarecki & Liu's OPRF-based PSI, SCN 2010): S pays |Y| + |X| exponentiations, R pays
   2|X|, and ⌈(40 + log2|X||Y|)/8⌉ bytes (8–10 in practice) per sender id cross instead
   of a 32-byte point.
4. R → S ``RESULT``: a bitmap over T's order marking the agreed intersection, encrypted
   to S (NaCl box: X25519 + XSalsa20-Poly1305), so the relay sees only its length.
   In cardinality mode the shuffled response leaves R only |X ∩ Y| (De Cristofaro,
   Gasti & Tsudik, CANS 2012); RESULT then carries the count alone.

What each side learns (semi-honest parties, a passive relay): R: the intersection (or its
size) and |Y|; S: the intersection R reveals (nothing but |X| in cardinality mode); the
relay: |X|, |Y| and message lengths — every point it carries is a fresh DDH-blinded group
element. Every message is bounded, checked against the session and the protocol state,
and every point is validated as an element of the prime-order group; duplicated points,
replays and out-of-order messages are refused.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from nacl.bindings import crypto_secretbox_MACBYTES
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from tsfl.errors import TsflError
from tsfl.vertical.group import (
    POINT_BYTES,
    GroupError,
    encode_id,
    hash_to_group,
    invert_scalar,
    multiply,
    random_scalar,
)

Mode = Literal["intersection", "cardinality"]
MAGIC = b"TSPS"
VERSION = 1
REQUEST, RESPONSE, RESULT = 1, 2, 3
_KINDS = {REQUEST: "request", RESPONSE: "response", RESULT: "result"}
_MODES = {"intersection": 1, "cardinality": 2}
HEADER = struct.Struct(">4sBBBx16sII")  # magic, version, kind, mode, session, n1, n2
KEY_BYTES = 32
BOX_OVERHEAD = Box.NONCE_SIZE + crypto_secretbox_MACBYTES


class PsiError(TsflError, ValueError):
    """A PSI message or input refused (names the reason)."""


@dataclass(frozen=True)
class PsiConfig:
    """What both parties of one PSI session agree on beforehand (from the job).

    ``salt``: the per-job salt of the id hash (need not be secret; it makes hashes of one
    job useless in another); ``session``: 16 bytes naming this pair in this job;
    ``max_receiver_items`` / ``max_sender_items``: refusal bounds on declared set sizes;
    ``statistical_bits``: σ; the sender's PRF values are truncated to
    ⌈(σ + log2(|X||Y|)) / 8⌉ bytes (at least 8), so a false match has chance ≤ 2^-σ."""

    salt: bytes
    session: bytes
    mode: Mode = "intersection"
    max_receiver_items: int = 2_000_000
    max_sender_items: int = 10_000_000
    statistical_bits: int = 40
    workers: int = 1

    def __post_init__(self) -> None:
        if not 16 <= len(self.salt) <= 64:
            raise ValueError("salt must be 16..64 bytes")
        if len(self.session) != 16:
            raise ValueError("session must be 16 bytes")
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}")
        if not 20 <= self.statistical_bits <= 128:
            raise ValueError("statistical_bits must be 20..128")

    def tag_bytes(self, n_receiver: int, n_sender: int) -> int:
        """Tag length for these set sizes (both sides compute it from the header)."""
        bits = self.statistical_bits + math.log2(max(1, n_receiver) * max(1, n_sender))
        return min(32, max(8, math.ceil(bits / 8)))
        if self.max_receiver_items < 1 or self.max_sender_items < 1 or self.workers < 1:
            raise ValueError("bounds and workers must be positive")


def session_id(salt: bytes, *names: str) -> bytes:
    """A 16-byte session name for a pair (or any tuple of names) in a job."""
    h = hashlib.sha256(b"TSFL-PSI-session" + salt)
    for n in names:
        h.update(len(n).to_bytes(2, "big") + n.encode())
    return h.digest()[:16]


def _unique_ids(ids: Iterable[str | int | bytes], limit: int) -> list[bytes]:
    out = []
    for i, item in enumerate(ids):
        if i >= limit:
            raise PsiError(f"more than {limit} ids")
        out.append(encode_id(item))
    if len(set(out)) != len(out):
        raise PsiError("duplicate ids in the input set")
    return out


def _pack(cfg: PsiConfig, kind: int, n1: int, n2: int, body: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, _MODES[cfg.mode], cfg.session, n1, n2) + body


def parse(cfg: PsiConfig, msg: bytes, kind: int) -> tuple[int, int, bytes]:
    """Header checks (magic, version, kind, mode, session, declared counts, exact length
    computed from the counts) before anything is read; returns (n1, n2, body)."""
    if not isinstance(msg, bytes | bytearray | memoryview):
        raise PsiError("message must be bytes")
    msg = bytes(msg)
    if len(msg) < HEADER.size:
        raise PsiError("message shorter than its header")
    magic, ver, k, mode, session, n1, n2 = HEADER.unpack_from(msg)
    if magic != MAGIC or ver != VERSION:
        raise PsiError("not a TSFL PSI v1 message")
    if k != kind:
        raise PsiError(f"expected a {_KINDS[kind]} message, got kind {k}")
    if mode != _MODES[cfg.mode]:
        raise PsiError("message for another PSI mode")
    if session != cfg.session:
        raise PsiError("message for another session (replayed from another job or pair?)")
    if kind == REQUEST:
        if not 1 <= n1 <= cfg.max_receiver_items or n2 != 0:
            raise PsiError(f"request declares {n1} items (bound {cfg.max_receiver_items})")
        size = KEY_BYTES + n1 * POINT_BYTES
    elif kind == RESPONSE:
        if n1 > cfg.max_receiver_items or not 1 <= n2 <= cfg.max_sender_items:
            raise PsiError(f"response declares {n1}/{n2} items, over the bounds")
        size = KEY_BYTES + n1 * POINT_BYTES + n2 * cfg.tag_bytes(n1, n2)
    else:
        if n1 > cfg.max_sender_items or n2 != 0:
            raise PsiError("result declares too many items")
        size = BOX_OVERHEAD + (-(-n1 // 8) if cfg.mode == "intersection" else 4)
    if len(msg) - HEADER.size != size:
        raise PsiError(f"{_KINDS[kind]} body is {len(msg) - HEADER.size} bytes, its header "
                       f"implies {size}")
    return n1, n2, msg[HEADER.size:]


def _points(body: bytes, offset: int, n: int) -> list[bytes]:
    pts = [body[offset + i * POINT_BYTES: offset + (i + 1) * POINT_BYTES] for i in range(n)]
    if len(set(pts)) != n:
        raise PsiError("duplicated points (replayed or repeated items)")
    return pts


def _tag(cfg: PsiConfig, point: bytes, size: int) -> bytes:
    return hashlib.sha256(b"TSFL-PSI-tag" + cfg.session + point).digest()[:size]


def _shuffled(n: int) -> list[int]:
    perm = list(range(n))
    rng = secrets.SystemRandom()
    rng.shuffle(perm)
    return perm


@dataclass
class PsiReceiver:
    """The party that learns the intersection (or its size) first."""

    ids: Sequence[str | int | bytes]
    config: PsiConfig
    _items: list[bytes] = field(init=False, repr=False)
    _key: bytes = field(init=False, repr=False)
    _box_key: PrivateKey = field(init=False, repr=False)
    _state: str = field(init=False, default="new")
    _tags: list[bytes] = field(init=False, repr=False, default_factory=list)
    _peer: PublicKey | None = field(init=False, default=None, repr=False)
    matches: list[bytes] = field(init=False, default_factory=list)
    match_positions: dict[bytes, int] = field(init=False, default_factory=dict, repr=False)
    cardinality: int | None = field(init=False, default=None)
    sender_size: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._items = _unique_ids(self.ids, self.config.max_receiver_items)
        if not self._items:
            raise PsiError("empty input set")
        self._key = random_scalar()
        self._box_key = PrivateKey.generate()

    def request(self) -> bytes:
        """Message 1: the blinded hashes of X."""
        if self._state != "new":
            raise PsiError("request already sent")
        self._state = "requested"
        cfg = self.config
        blinded = multiply(hash_to_group(cfg.salt, self._items, cfg.workers), self._key,
                           cfg.workers)
        body = bytes(self._box_key.public_key) + b"".join(blinded)
        return _pack(cfg, REQUEST, len(blinded), 0, body)

    def handle_response(self, msg: bytes) -> list[bytes]:
        """Message 2: the intersection (encoded ids; empty in cardinality mode)."""
        if self._state != "requested":
            raise PsiError(f"unexpected response in state {self._state!r} (replayed?)")
        cfg = self.config
        n1, n2, body = parse(cfg, msg, RESPONSE)
        if n1 != len(self._items):
            raise PsiError(f"response has {n1} points for {len(self._items)} requested")
        self._peer = PublicKey(body[:KEY_BYTES])
        points = _points(body, KEY_BYTES, n1)
        off = KEY_BYTES + n1 * POINT_BYTES
        t = cfg.tag_bytes(n1, n2)
        self._tags = [body[off + i * t: off + (i + 1) * t] for i in range(n2)]
        positions = {tag: i for i, tag in enumerate(self._tags)}
        if len(positions) != n2:
            raise PsiError("duplicated sender tags")
        try:
            prf = multiply(points, invert_scalar(self._key), cfg.workers)
        except GroupError as exc:
            raise PsiError(f"response: {exc}") from None
        self._state = "answered"
        self.sender_size = n2
        hits = [(i, positions[tg]) for i, p in enumerate(prf)
                if (tg := _tag(cfg, p, t)) in positions]
        self.cardinality = len(hits)
        if cfg.mode == "intersection":
            self.matches = [self._items[i] for i, _ in hits]
            self.match_positions = {self._items[i]: j for i, j in hits}
        return list(self.matches)

    def result(self, keep: Iterable[bytes] | None = None) -> bytes:
        """Message 3, encrypted to the sender: which of its ids are in the agreed
        intersection (``keep`` ⊆ matches, e.g. the intersection over all parties), or,
        in cardinality mode, the count."""
        if self._state != "answered" or self._peer is None:
            raise PsiError("result before the response, or twice")
        self._state = "done"
        cfg, m = self.config, len(self._tags)
        if cfg.mode == "cardinality":
            plain = (self.cardinality or 0).to_bytes(4, "big")
        else:
            bits = bytearray(-(-m // 8))
            for item in (self.matches if keep is None else keep):
                j = self.match_positions.get(item)
                if j is None:
                    raise PsiError("keep names an id outside the intersection")
                bits[j >> 3] |= 1 << (j & 7)
            plain = bytes(bits)
        sealed = Box(self._box_key, self._peer).encrypt(plain)
        return _pack(cfg, RESULT, m, 0, bytes(sealed))


@dataclass
class PsiSender:
    """The party that answers; learns what the receiver's result reveals."""

    ids: Sequence[str | int | bytes]
    config: PsiConfig
    _items: list[bytes] = field(init=False, repr=False)
    _order: list[int] = field(init=False, repr=False)
    _key: bytes = field(init=False, repr=False)
    _box_key: PrivateKey = field(init=False, repr=False)
    _peer: PublicKey | None = field(init=False, default=None, repr=False)
    _state: str = field(init=False, default="new")
    intersection: list[bytes] = field(init=False, default_factory=list)
    cardinality: int | None = field(init=False, default=None)
    receiver_size: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._items = _unique_ids(self.ids, self.config.max_sender_items)
        if not self._items:
            raise PsiError("empty input set")
        self._order = _shuffled(len(self._items))
        self._key = random_scalar()
        self._box_key = PrivateKey.generate()

    def handle_request(self, msg: bytes) -> bytes:
        """Message 1 → message 2."""
        if self._state != "new":
            raise PsiError("a second request in this session (replay) refused")
        cfg = self.config
        n1, _, body = parse(cfg, msg, REQUEST)
        points = _points(body, KEY_BYTES, n1)
        try:
            answered = multiply(points, self._key, cfg.workers)
        except GroupError as exc:
            raise PsiError(f"request: {exc}") from None
        self._state = "answered"
        self._peer = PublicKey(body[:KEY_BYTES])
        self.receiver_size = n1
        if cfg.mode == "cardinality":
            answered = [answered[i] for i in _shuffled(n1)]
        mine = multiply(hash_to_group(cfg.salt, [self._items[i] for i in self._order],
                                      cfg.workers), self._key, cfg.workers)
        t = cfg.tag_bytes(n1, len(mine))
        tags = b"".join(_tag(cfg, p, t) for p in mine)
        body_out = bytes(self._box_key.public_key) + b"".join(answered) + tags
        return _pack(cfg, RESPONSE, n1, len(mine), body_out)

    def handle_result(self, msg: bytes) -> list[bytes]:
        """Message 3: the intersection (cardinality mode: empty; see ``cardinality``)."""
        if self._state != "answered" or self._peer is None:
            raise PsiError(f"unexpected result in state {self._state!r} (replayed?)")
        cfg = self.config
        n1, _, body = parse(cfg, msg, RESULT)
        if n1 != len(self._items):
            raise PsiError("result for a different sender set size")
        try:
            plain = Box(self._box_key, self._peer).decrypt(body)
        except CryptoError:
            raise PsiError("result does not decrypt (tampered or not for us)") from None
        self._state = "done"
        limit = min(self.receiver_size or 0, n1)
        if cfg.mode == "cardinality":
            count = int.from_bytes(plain, "big")
            if count > limit:
                raise PsiError("cardinality larger than either set")
            self.cardinality = count
            return []
        if len(plain) != -(-n1 // 8) or (n1 % 8 and plain[-1] >> (n1 % 8)):
            raise PsiError("malformed result bitmap")
        hits = [j for j in range(n1) if plain[j >> 3] >> (j & 7) & 1]
        if len(hits) > limit:
            raise PsiError("result marks more ids than the receiver sent")
        self.intersection = [self._items[self._order[j]] for j in hits]
        self.cardinality = len(hits)
        return list(self.intersection)
