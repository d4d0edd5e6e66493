"""How a device waits before retrying a transient failure: capped exponential back-off
with jitter.

Transient: ``UNAVAILABLE`` (the coordinator restarting, the network, the broker behind
the coordinator unreachable), ``DEADLINE_EXCEEDED``, ``RESOURCE_EXHAUSTED`` (slow down)
and ``ABORTED``. Retry ``n`` (from 0) waits ``min(cap_s, base_s · 2ⁿ)`` scaled by a
uniform factor in ``[1 − jitter, 1]``: the waits grow until the cap and a fleet that
failed together does not come back together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

#: status codes worth retrying unchanged
TRANSIENT: frozenset[grpc.StatusCode] = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED})


def transient(code: grpc.StatusCode | None) -> bool:
    return code in TRANSIENT


@dataclass(frozen=True, slots=True)
class Backoff:
    """``delay(n)``: how long to wait before retry ``n`` (0-based)."""

    base_s: float = 0.1
    cap_s: float = 10.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.base_s <= self.cap_s) or not 0 <= self.jitter <= 1:
            raise ValueError("need 0 < base_s <= cap_s and 0 <= jitter <= 1")

    def ceiling(self, attempt: int) -> float:
        """The wait before retry ``attempt`` without jitter."""
        return min(self.cap_s, self.base_s * 2 ** min(max(attempt, 0), 62))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        u = (rng or random).random()
        return self.ceiling(attempt) * (1 - self.jitter * u)
