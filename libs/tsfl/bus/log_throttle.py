"""Repeated log lines, at most one per ``every_s`` seconds, with a count of the rest.

A broker outage makes the Kafka client log the same failure many times a second (each
reconnect, fetch, heartbeat and commit retry), for as long as it lasts. :class:`Throttle`
lets the first line of a kind through, holds back the repeats for ``every_s`` seconds and
appends their count to the next one that passes. :class:`ThrottleFilter` applies it to
log records of chosen loggers (the Kafka client's), keyed by logger, level and message
template (so one kind of failure is one key, whatever its arguments).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterable

#: loggers whose records are throttled by default: the Kafka client's
KAFKA_LOGGERS = ("aiokafka", "kafka")


class Throttle:
    """Admits one event per key every ``every_s`` seconds and counts the others."""

    def __init__(self, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000):
        if every_s <= 0:
            raise ValueError("every_s must be positive")
        self.every_s = every_s
        self.clock = clock
        self.max_keys = max_keys
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def admit(self, key: Hashable) -> int | None:
        """``None``: hold this event back (it is counted); else let it through, with the
        number of events of ``key`` held back since the last one that passed."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        if len(self._last) >= self.max_keys:  # bounded memory, whatever the keys
            self._last.clear()
            self._held.clear()
        self._last[key] = now
        return self._held.pop(key, 0)


class ThrottleFilter(logging.Filter):
    """Throttles the records of the loggers named ``prefixes`` (and their children); the
    one that passes after repeats says how many were held back."""

    def __init__(self, prefixes: Iterable[str] = KAFKA_LOGGERS, every_s: float = 30.0):
        super().__init__()
        self.prefixes = tuple(prefixes)
        self.throttle = Throttle(every_s)

    def _applies(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._applies(record.name):
            return True
        held = self.throttle.admit((record.name, record.levelno, str(record.msg)))
        if held is None:
            return False
        if held:
            record.msg = (f"{record.getMessage()} [{held} similar message(s) held back in "
                          f"the last {self.throttle.every_s:.0f} s]")
            record.args = None
        return True


_INSTALLED: dict[tuple[tuple[str, ...], float], ThrottleFilter] = {}


def install(every_s: float = 30.0, prefixes: Iterable[str] = KAFKA_LOGGERS) -> ThrottleFilter:
    """Throttle the records of every logger named ``prefixes`` or below them that exists
    now (the Kafka client creates its loggers when imported), whatever handlers write
    them. Idempotent: installing again adds the same filter to loggers created since."""
    prefixes = tuple(prefixes)
    flt = _INSTALLED.setdefault((prefixes, every_s), ThrottleFilter(prefixes, every_s))
    names = [n for n in list(logging.root.manager.loggerDict) if flt._applies(n)]
    for name in {*names, *prefixes}:
        logger = logging.getLogger(name)
        if flt not in logger.filters:
            logger.addFilter(flt)
    return flt
