"""Is the broker reachable? One watcher per service, and what the broker's return means.

:class:`BrokerWatch` asks the broker for its topics every ``interval_s`` seconds (one
metadata request, bounded by ``timeout_s``). ``failures`` failed probes in a row make
the broker *unreachable*: the listeners hear an :class:`Outage` (since when, and the
last error). The first probe that succeeds again makes it *reachable*: the watcher first
re-creates the topics the broker lost (a broker without durable storage, such as the
in-memory Tansu, comes back empty), then the listeners hear a :class:`Recovery` (how
long it was down; whether the broker lost its data). A broker lost its data when one of
the topics is missing, or has another partition count than when the watcher started (a
client asked for it first and the broker auto-created it), or when a partition now ends
before a record the broker had acknowledged to this service (another service's watcher
re-created the topics first). A restart between two probes is noticed by the topic
check alone, as a Recovery after 0 s.

Listeners run one at a time, in the watcher's task, in the order of the events; one that
raises is logged and the others still run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from tsfl.bus.base import BusUnavailable
from tsfl.bus.kafka import STOP_TIMEOUT_S, KafkaBus, error_text

log = logging.getLogger("tsfl.bus.liveness")


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass(frozen=True, slots=True)
class Outage:
    """The broker stopped answering at ``since`` (wall clock, seconds since the epoch)."""

    since: float
    error: str

    def describe(self) -> str:
        return f"broker unreachable since {_iso(self.since)} ({self.error})"


@dataclass(frozen=True, slots=True)
class Recovery:
    """The broker answers again after ``down_s`` seconds. It lost its data (records and
    committed offsets) when ``recreated`` (topics it had lost, re-created by the watcher),
    ``mismatched`` (topics it re-created itself, with other partition counts) or
    ``truncated`` (partitions now ending before a record it had acknowledged to this
    service) is not empty."""

    down_s: float
    recreated: tuple[str, ...] = ()
    mismatched: tuple[str, ...] = ()
    truncated: tuple[str, ...] = ()

    @property
    def lost_data(self) -> bool:
        return bool(self.recreated or self.mismatched or self.truncated)

    def describe(self) -> str:
        text = f"broker reachable again after {self.down_s:.0f} s"
        if self.lost_data:
            parts = [f"{label}: {', '.join(names)}" for label, names in (
                ("topics re-created", self.recreated),
                ("topics the broker re-created with other partition counts", self.mismatched),
                ("partitions missing acknowledged records", self.truncated)) if names]
            text += f"; it had lost its data ({'; '.join(parts)})"
        return text


BrokerEvent = Outage | Recovery
Listener = Callable[[BrokerEvent], Awaitable[None]]


class BrokerWatch:
    """Probes ``bus``'s broker and keeps ``topics`` (name -> partitions) in existence."""

    def __init__(self, bus: KafkaBus, topics: Mapping[str, int], *, interval_s: float = 1.0,
                 timeout_s: float = 3.0, failures: int = 2):
        if interval_s <= 0 or timeout_s <= 0 or failures < 1:
            raise ValueError("interval_s and timeout_s must be positive, failures >= 1")
        self.bus = bus
        self.topics = dict(topics)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.failures = failures
        self._listeners: list[Listener] = []
        self._outage: Outage | None = None
        self._failed = 0
        self._first_failure: float | None = None
        self._known: dict[str, int] = {}
        self._admin: AIOKafkaAdminClient | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def reachable(self) -> bool:
        return self._outage is None

    @property
    def outage(self) -> Outage | None:
        """The outage in progress, or ``None`` while the broker is reachable."""
        return self._outage

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        """Start watching (the broker is taken as reachable: the service just connected).
        The topics' partition counts now are the reference later probes compare with."""
        with contextlib.suppress(BusUnavailable):
            self._known = self._ours(await self.probe())
        self._task = asyncio.create_task(self._loop(), name="tsfl-broker-watch")

    async def stop(self) -> None:
        """Stop probing; no listener runs after this returns."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_admin()

    async def probe(self) -> dict[str, int]:
        """Every topic of the broker with its partition count; raises
        :class:`~tsfl.bus.base.BusUnavailable` when no answer comes within ``timeout_s``."""
        try:
            if self._admin is None:
                admin = AIOKafkaAdminClient(
                    bootstrap_servers=self.bus.bootstrap, client_id=f"{self.bus.client_id}-watch",
                    request_timeout_ms=int(self.timeout_s * 1000))
                await asyncio.wait_for(admin.start(), self.timeout_s)
                self._admin = admin
            # all topics (a null topic list): asking for named ones would auto-create them
            described = await asyncio.wait_for(self._admin.describe_topics(None),
                                               self.timeout_s)
        except (TimeoutError, KafkaError, OSError) as exc:
            await self._close_admin()
            raise BusUnavailable(error_text(exc)) from exc
        return {t["topic"]: len(t["partitions"]) for t in described}

    def _ours(self, found: Mapping[str, int]) -> dict[str, int]:
        return {name: found[name] for name in self.topics if name in found}

    async def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(admin.close(), STOP_TIMEOUT_S)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                found = await self.probe()
                recreated, mismatched = await self._check_topics(found)
                truncated: list[str] = []
                if self._outage is not None or recreated or mismatched:
                    truncated = await self.bus.lost_acknowledged(self.timeout_s * 3)
            except BusUnavailable as exc:
                await self._failed_probe(str(exc))
                continue
            self._failed, self._first_failure = 0, None
            if self._outage is None and not (recreated or mismatched):
                continue  # reachable, and nothing lost since the last probe
            down_s = time.time() - self._outage.since if self._outage else 0.0
            self._outage = None  # (0 s: a restart between two probes)
            recovery = Recovery(down_s, recreated, mismatched, tuple(truncated))
            log.warning("%s", recovery.describe())
            await self._notify(recovery)

    async def _failed_probe(self, error: str) -> None:
        self._failed += 1
        if self._first_failure is None:
            self._first_failure = time.time()
        if self._outage is None and self._failed >= self.failures:
            self._outage = Outage(self._first_failure, error)
            log.error("%s; health NOT_SERVING until it answers", self._outage.describe())
            await self._notify(self._outage)

    async def _check_topics(self, found: dict[str, int]
                            ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Re-create the topics the broker lost; ``(recreated, mismatched)``."""
        missing = {n: p for n, p in self.topics.items() if n not in found}
        mismatched = tuple(n for n, p in self._ours(found).items()
                           if n in self._known and self._known[n] != p)
        if missing:
            await self.bus.create_topics(missing, timeout_s=self.timeout_s * 3)
            found = {**found, **missing}
        self._known = self._ours(found)
        if mismatched:
            log.warning("topics %s came back with other partition counts (%s): the broker "
                        "re-created them on a client's request after losing them",
                        ", ".join(mismatched),
                        ", ".join(f"{n}={found[n]}" for n in mismatched))
        return tuple(missing), mismatched

    async def _notify(self, event: BrokerEvent) -> None:
        for listener in self._listeners:
            try:
                await listener(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("a broker-%s listener failed",
                              "outage" if isinstance(event, Outage) else "recovery")
