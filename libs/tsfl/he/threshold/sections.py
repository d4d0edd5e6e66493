"""Threshold ciphertexts on the wire: a device's signed section, and the round's sum with
its manifest of signed sections.

A section is framed as the shared-key ones (:func:`tsfl.he.signing.frame`): a msgpack
header ``{key, n, w, t, k, sig}`` (key id, values, weight, terms, RNS limbs, signature)
and then the ciphertexts, (count, 2, k, N) residues — c0 in coefficient form, c1 in NTT
form — packed 30 bits each (four residues in 15 bytes, :func:`pack30`): 7.5k bytes per
real, 3.75× float32 for two limbs (before the last ciphertext's padding).

The he service adds sections limb-wise (:class:`SectionSum`: uint64 accumulators, one
reduction at the end) after checking every residue and signature, and records for each
section its **manifest entry**: the device, the section digest, its weight, signature and
certificate. The sum's header carries the job, the round and the manifest, so a silo can
check that what it is asked to open is the sum of those signed sections
(:mod:`tsfl.he.threshold.opening`) — the server cannot forge an entry.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tsfl.he.errors import HeError
from tsfl.he.signing import frame, split_frame
from tsfl.he.threshold.keys import JobKey
from tsfl.he.threshold.scheme import ciphertext_count

_MAX_HEAD = 2048
#: manifest bytes allowed per term in a sum's header (an entry is ~300 bytes)
_ENTRY_BYTES = 1024


def pack30(residues: np.ndarray) -> bytes:
    """Residues below 2^30 (a multiple of four of them), 30 bits each: four in 15 bytes
    (little-endian: v0 | v1 << 30 | v2 << 60 | v3 << 90)."""
    v = np.ascontiguousarray(residues, dtype=np.uint64).reshape(-1, 4)
    lo = v[:, 0] | (v[:, 1] << np.uint64(30)) | (v[:, 2] << np.uint64(60))
    hi = (v[:, 2] >> np.uint64(4)) | (v[:, 3] << np.uint64(26))
    out = np.empty((v.shape[0], 15), dtype=np.uint8)
    out[:, :8] = lo.astype("<u8").view(np.uint8).reshape(-1, 8)
    out[:, 8:] = hi.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :7]
    return out.tobytes()


def unpack30(data: bytes | memoryview, count: int) -> np.ndarray:
    """The inverse of :func:`pack30`: ``count`` residues (uint64). Two overlapping
    strided views read each 15-byte group's bytes 0–7 and 7–14 in place."""
    raw = np.frombuffer(data, dtype=np.uint8)
    groups = count // 4
    if count % 4 or raw.size != groups * 15:
        raise HeError("sealed", f"expected {groups * 15} bytes of packed residues")
    lo = np.ndarray((groups,), dtype="<u8", buffer=raw, strides=(15,))
    hi = np.ndarray((groups,), dtype="<u8", buffer=raw, offset=7, strides=(15,)) >> np.uint64(8)
    mask = np.uint64((1 << 30) - 1)
    out = np.empty((groups, 4), dtype=np.uint64)
    np.bitwise_and(lo, mask, out=out[:, 0])
    np.bitwise_and(lo >> np.uint64(30), mask, out=out[:, 1])
    np.bitwise_and((lo >> np.uint64(60)) | (hi << np.uint64(4)), mask, out=out[:, 2])
    np.bitwise_and(hi >> np.uint64(26), mask, out=out[:, 3])
    return out.reshape(-1)


def payload_bytes(key: JobKey, size: int) -> int:
    p = key.params
    return ciphertext_count(size, p) * 2 * p.limbs * p.poly_degree * 15 // 4


def to_bytes(key_id: str, size: int, weight: float, polys: np.ndarray, terms: int = 1,
             extra: dict[str, Any] | None = None) -> bytes:
    """A section (unsigned) or, with ``extra`` (job, round, manifest), a sum."""
    head = {"key": key_id, "n": int(size), "w": float(weight), "t": int(terms),
            "k": int(polys.shape[-2]), **(extra or {})}
    return frame(head, pack30(polys))


def _check_head(head: dict[str, Any], key: JobKey, size: int, max_terms: int) -> None:
    k, n, w, t = (head.get(f) for f in ("k", "n", "w", "t"))
    if head.get("key") != key.key_id:
        raise HeError("key", f"encrypted under key {head.get('key')!r}, the job's is "
                             f"{key.key_id!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n != size:
        raise HeError("sealed", f"encrypted section holds {n!r} values, {size} expected")
    if not isinstance(w, int | float) or isinstance(w, bool) or not (
            math.isfinite(w) and w > 0):
        raise HeError("sealed", f"weight must be a positive number, got {w!r}")
    if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= max_terms:
        raise HeError("sealed", f"terms must be in 1..{max_terms}, got {t!r}")
    if k != key.params.limbs:
        raise HeError("sealed", f"expected {key.params.limbs} RNS limbs, got {k!r}")


def residues(payload: memoryview, key: JobKey, size: int) -> np.ndarray:
    """The checked residues (count, 2, k, N) uint64 of a section's payload."""
    p = key.params
    if len(payload) != payload_bytes(key, size):
        raise HeError("sealed", f"expected {payload_bytes(key, size)} ciphertext bytes")
    shape = (ciphertext_count(size, p), 2, p.limbs, p.poly_degree)
    polys = unpack30(payload, int(np.prod(shape))).reshape(shape)
    if (polys >= np.array(p.primes, dtype=np.uint64).reshape(-1, 1)).any():
        raise HeError("ciphertext", "a residue is not reduced mod its prime")
    return polys


def parse_section(data: bytes | memoryview, key: JobKey, size: int
                  ) -> tuple[dict[str, Any], memoryview]:
    """A device section's checked header (signature unchecked) and payload view."""
    head, payload = split_frame(data, _MAX_HEAD, max_bin_len=64, max_array_len=0,
                                max_map_len=8, max_str_len=256)
    _check_head(head, key, size, 1)
    if len(payload) != payload_bytes(key, size):
        raise HeError("sealed", f"expected {payload_bytes(key, size)} ciphertext bytes")
    return head, payload


@dataclass
class SumView:
    """A round's sum as a silo reads it from the model."""

    job_id: str
    round: int
    key_id: str
    size: int
    weight: float
    manifest: list[dict[str, Any]]
    polys: np.ndarray  # (count, 2, k, N)
    digest: bytes  # SHA-256 of the sum's bytes: names it in every opening message


def parse_sum(data: bytes | memoryview, key: JobKey, size: int) -> SumView:
    p = key.params
    head, payload = split_frame(data, _MAX_HEAD + _ENTRY_BYTES * p.max_terms,
                                max_bin_len=64, max_array_len=p.max_terms, max_map_len=8,
                                max_str_len=256)
    _check_head(head, key, size, p.max_terms)
    job, number, manifest = head.get("j"), head.get("r"), head.get("m")
    if not isinstance(job, str) or not isinstance(number, int) or not isinstance(
            manifest, list) or len(manifest) != head["t"]:
        raise HeError("sealed", "the encrypted sum lacks its job, round or manifest")
    if not all(isinstance(e, dict) for e in manifest):
        raise HeError("sealed", "malformed manifest entry")
    return SumView(job, number, key.key_id, size, float(head["w"]), manifest,
                   residues(payload, key, size), hashlib.sha256(data).digest())


class SectionSum:
    """The he service's fold of checked sections: limb-wise uint64 sums (residues are
    below 2^30, so 2^34 of them never wrap) and the manifest."""

    def __init__(self, key: JobKey, size: int):
        self.key = key
        self.size = size
        p = key.params
        self._acc = np.zeros((ciphertext_count(size, p), 2, p.limbs, p.poly_degree),
                             dtype=np.uint64)
        self._p = np.array(p.primes, dtype=np.uint64).reshape(-1, 1)
        self.manifest: list[dict[str, Any]] = []
        self.weight = 0.0

    @property
    def terms(self) -> int:
        return len(self.manifest)

    def add(self, polys: np.ndarray, entry: dict[str, Any]) -> None:
        """Add a checked, verified section; ``entry``: {id, d, w, s, c}."""
        if self.terms + 1 > self.key.params.max_terms:
            raise HeError("sealed", f"more than {self.key.params.max_terms} encrypted terms "
                                    "in one sum: the parameters' precision holds for at "
                                    "most that many")
        np.add(self._acc, polys, out=self._acc)
        self.manifest.append(entry)
        self.weight += float(entry["w"])

    def result(self, job_id: str, round_number: int) -> bytes:
        if not self.manifest:
            raise HeError("sealed", "nothing was added")
        total = np.remainder(self._acc, self._p)
        return to_bytes(self.key.key_id, self.size, self.weight, total, self.terms,
                        {"j": job_id, "r": round_number, "m": self.manifest})
