"""A SecAgg+ round's public parameters (:class:`RoundConfig`), what both sides derive
from them (the round id, Shamir points, pairwise mask seeds and signs) and the errors
that end a round. The protocol itself: :mod:`tsfl.secagg`."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tsfl.errors import ErrorKind, TsflError
from tsfl.secagg import graph, keys, params
from tsfl.secagg.keys import KeyAgreement
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


def pair_sign(u: str, v: str) -> int:
    """The sign of the pairwise mask u adds for neighbour v: + when u < v."""
    return 1 if u < v else -1


def mask_seed(s_key: X25519PrivateKey, peer_s_pk: bytes, round_id: bytes) -> bytes:
    """s_uv: the PRG seed of the pairwise mask between u (``s_key``) and v."""
    return keys.agree(s_key, peer_s_pk, b"mask:" + round_id)

