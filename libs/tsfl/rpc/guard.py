"""Unauthenticated work, bounded: per-peer rate limits and aggregated refusal audits.

Adversary: a network peer without credentials (or with a guessed enrolment token). Each
refused call costs it a token from its peer's bucket (``burst`` at once, ``rate`` a
second); an empty bucket is answered ``RESOURCE_EXHAUSTED`` before any database work.
Refusals are not audited one row each (200 anonymous calls used to add 200 rows to a
victim job's chain): :class:`RefusalLog` keeps counts per (chain, code) and writes one
aggregated row per window — bounded rows; a refusal not yet written is counted in the
next row of its (chain, code), or by :meth:`RefusalLog.flush`.
Device ids are 1–128 characters of ``[A-Za-z0-9._:@-]``, checked before anything else.
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

DEVICE_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
_MAX_PEERS = 10_000


def valid_device_id(device: str) -> bool:
    return bool(DEVICE_ID.match(device))


class PeerLimiter:
    """A token bucket per peer address for refused (unauthenticated) calls."""

    def __init__(self, *, rate: float = 2.0, burst: float = 20.0):
        self.rate = rate
        self.burst = burst
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = (
            collections.OrderedDict())

    def _tokens(self, peer: str, now: float) -> float:
        tokens, at = self._buckets.get(peer, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def allowed(self, peer: str) -> bool:
        """Whether ``peer`` may still be refused the slow way (its bucket is not empty)."""
        return self._tokens(peer, time.monotonic()) >= 1.0

    def charge(self, peer: str) -> None:
        now = time.monotonic()
        self._buckets[peer] = (max(0.0, self._tokens(peer, now) - 1.0), now)
        self._buckets.move_to_end(peer)
        while len(self._buckets) > _MAX_PEERS:
            self._buckets.popitem(last=False)


class RefusalLog:
    """Aggregated audit rows for refused calls: per (chain, code), at most one row per
    ``window_s``, carrying how many refusals it covers and a few sample details."""

    def __init__(self, write: Callable[[str, str, dict[str, Any]], Awaitable[None]], *,
                 window_s: float = 10.0):
        self.write = write
        self.window_s = window_s
        self._pending: dict[tuple[str, str], dict[str, Any]] = {}
        self._last: dict[tuple[str, str], float] = {}

    async def refused(self, chain: str, kind: str, code: str,
                      detail: dict[str, Any]) -> None:
        key = (chain, code)
        entry = self._pending.setdefault(key, {"code": code, "count": 0, "samples": []})
        entry["count"] += 1
        if len(entry["samples"]) < 3:
            entry["samples"].append({k: (v[:128] if isinstance(v, str) else v)
                                     for k, v in detail.items()})
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.window_s:
            self._last[key] = now
            del self._pending[key]
            await self.write(chain, kind, {**entry, "window_s": self.window_s})
        if len(self._last) > _MAX_PEERS:
            self._last.clear()

    async def flush(self) -> None:
        """Write every pending count (e.g. when the server stops)."""
        pending, self._pending = self._pending, {}
        for (chain, _), entry in pending.items():
            await self.write(chain, "call.refused", {**entry, "window_s": self.window_s})
