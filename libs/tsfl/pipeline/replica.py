"""What every replicated stage shares: one member of the stage's consumer group (its
partitions split among the replicas) that also reads ``tsfl.rounds`` whole, in a group of
its own (:class:`~tsfl.pipeline.broadcast.BroadcastReader`), and follows rebalances.

A subclass says what it does with a round event (``_on_broadcast``) and with a new
assignment (``_sync_assignment``, called under ``_lock`` every
:data:`ASSIGNMENT_CHECK_S` and before each record it handles).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from abc import abstractmethod

from tsfl.bus import topics
from tsfl.bus.base import Record
from tsfl.pipeline.broadcast import BroadcastReader, start_both
from tsfl.pipeline.role import BusRole

#: how often a replica looks at its assignment when no record arrives
ASSIGNMENT_CHECK_S = 0.5


def replica_id() -> str:
    """This process's replica name: ``TSFL_REPLICA`` (the stack's index, the pod's name),
    else host and pid."""
    return os.environ.get("TSFL_REPLICA") or f"{socket.gethostname()}-{os.getpid()}"


class ReplicaMember(BusRole):
    """The lifecycle of a replica (see the module docstring); mixed in before the role."""

    replica: str
    rounds: BroadcastReader
    _lock: asyncio.Lock
    _parts: frozenset[int] | None
    _watcher: asyncio.Task[None] | None

    def _join_replicas(self, replica: str | None) -> None:
        """Call from ``__init__``, after the role's own."""
        self.replica = replica or replica_id()
        self.rounds = BroadcastReader(self.bus, topics.ROUNDS,
                                      f"{self.group_id}.{self.replica}", self._on_broadcast,
                                      self.log)
        self._lock = asyncio.Lock()
        self._parts = None
        self._watcher = None

    @abstractmethod
    async def _on_broadcast(self, record: Record) -> None:
        """A ``tsfl.rounds`` record (settle it through ``self.rounds``)."""

    @abstractmethod
    async def _sync_assignment(self) -> None:
        """Follow this member's assignment, when it changed (under ``_lock``)."""

    async def start(self) -> None:
        self._parts = None
        await start_both(super().start(), self.rounds, self._stop_group)
        self._watcher = asyncio.create_task(self._watch(), name=f"tsfl-{self.name}-parts")

    async def stop(self) -> None:
        await self._stop_extras(commit=True)
        await super().stop()

    async def detach(self) -> None:
        await self._stop_extras(commit=False)
        await super().detach()

    async def _stop_group(self) -> None:
        await super().stop()

    async def _stop_extras(self, *, commit: bool) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self.rounds.stop(commit=commit, timeout_s=self.drain_s)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(ASSIGNMENT_CHECK_S)
            async with self._lock:
                await self._sync_assignment()


__all__ = ["ASSIGNMENT_CHECK_S", "ReplicaMember", "replica_id"]
