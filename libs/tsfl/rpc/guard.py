"""Unauthenticated work, bounded: per-peer rate limits and aggregated refusal audits.

Adversary: a network peer without credentials (or with a guessed enrolment token). Each
refused call costs it a token from its peer's bucket (``burst`` at once, ``rate`` a
second); an empty bucket is answered ``RESOURCE_EXHAUSTED`` before any database work.
Refusals are not audited one row each (200 anonymous calls used to add 200 rows to a
victim job's chain): :class:`RefusalLog` keeps counts per (chain, kind, code) and writes
one aggregated row per window — bounded rows; the refusals a window held back are
written when it ends (or by :meth:`RefusalLog.flush`), under their own kind (a refused
heartbeat is a ``call.refused``, never an ``upload.refused``).
Device ids are 1–128 characters of ``[A-Za-z0-9._:@-]``, checked before anything else.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

DEVICE_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
_MAX_PEERS = 10_000
log = logging.getLogger(__name__)


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
    """Aggregated audit rows for refused calls: per (chain, kind, code), at most one row
    per ``window_s``, carrying how many refusals it covers and a few sample details.
    Refusals held back within a window are written when it ends (a timer), so a burst is
    counted whole even if no refusal follows it."""

    def __init__(self, write: Callable[[str, str, dict[str, Any]], Awaitable[None]], *,
                 window_s: float = 10.0):
        self.write = write
        self.window_s = window_s
        self._pending: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._last: dict[tuple[str, str, str], float] = {}
        self._timers: dict[tuple[str, str, str], asyncio.TimerHandle] = {}
        self._writes: set[asyncio.Task[None]] = set()

    async def refused(self, chain: str, kind: str, code: str,
                      detail: dict[str, Any]) -> None:
        key = (chain, kind, code)
        entry = self._pending.setdefault(key, {"code": code, "count": 0, "samples": []})
        entry["count"] += 1
        if len(entry["samples"]) < 3:
            entry["samples"].append({k: (v[:128] if isinstance(v, str) else v)
                                     for k, v in detail.items()})
        now = time.monotonic()
        wait = self._last.get(key, -1e9) + self.window_s - now
        if wait <= 0:
            await self._write_key(key)
        elif key not in self._timers and len(self._timers) < _MAX_PEERS:
            self._timers[key] = asyncio.get_running_loop().call_later(
                wait, self._window_ended, key)
        if len(self._last) > _MAX_PEERS:
            self._last = {k: t for k, t in self._last.items() if k in self._pending}

    async def _write_key(self, key: tuple[str, str, str]) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        entry = self._pending.pop(key, None)
        if entry is None:
            return
        self._last[key] = time.monotonic()
        await self.write(key[0], key[1], {**entry, "window_s": self.window_s})

    def _window_ended(self, key: tuple[str, str, str]) -> None:
        self._timers.pop(key, None)
        task = asyncio.ensure_future(self._write_key(key))
        self._writes.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("a refusal audit row was not written: %s", task.exception())

    async def flush(self) -> None:
        """Write every pending count now (e.g. when the server stops), each under its
        kind."""
        for key in list(self._pending):
            await self._write_key(key)
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
