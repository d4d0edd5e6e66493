"""What a service does when its broker goes away and comes back.

Subscribed to the service's :class:`~tsfl.bus.liveness.BrokerWatch`:

* the broker is unreachable → the health check answers NOT_SERVING (every name the
  service serves), the coordinator pauses its jobs
  (:meth:`~tsfl.runtime.jobs.JobManager.pause`: no round timer fires, GetJob says why),
  and the role leaves its consumer group (:meth:`~tsfl.pipeline.role.BusRole.detach`: a
  member left behind would hold up the group's next join on the broker's return);
* it answers again (the watcher has re-created the topics it lost) → the role's consumer
  is replaced by a fresh member of its group (:meth:`~tsfl.pipeline.role.BusRole.reconnect`:
  the old one's session, and on a broker that lost its data its offsets, are gone), the
  coordinator resumes its jobs, and health is SERVING again. A reconnect that fails is
  retried with back-off (up to ``max_wait_s`` apart) until it succeeds; the service is
  NOT_SERVING meanwhile.

After :meth:`close` (the service is stopping) nothing is changed any more.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from grpc_health.v1 import health

from tsfl.bus.liveness import BrokerEvent, Outage
from tsfl.bus.log_throttle import Throttle
from tsfl.pipeline.role import BusRole
from tsfl.rpc.health import set_serving

if TYPE_CHECKING:  # the coordinator's alone: other services never load it
    from tsfl.runtime.jobs import JobManager

log = logging.getLogger("tsfl.service")


class OutageResponse:
    """A :class:`~tsfl.bus.liveness.BrokerWatch` listener for one service: its role, its
    health service (the names it answers for) and, on the coordinator, its jobs."""

    def __init__(self, role: BusRole, health_servicer: health.aio.HealthServicer,
                 health_names: tuple[str, ...], jobs: JobManager | None = None,
                 max_wait_s: float = 10.0):
        self.role = role
        self.health = health_servicer
        self.health_names = health_names
        self.jobs = jobs
        self.max_wait_s = max_wait_s
        self.closed = False
        self._warnings = Throttle(30.0)

    def close(self) -> None:
        """The service is stopping: later events change nothing."""
        self.closed = True

    async def __call__(self, event: BrokerEvent) -> None:
        """Outage: NOT_SERVING, jobs paused, consumer detached. Recovery: consume again
        (retried until it works), jobs resumed, SERVING."""
        if self.closed:
            return
        if isinstance(event, Outage):
            await set_serving(self.health, False, self.health_names)
            if self.jobs is not None:
                await self.jobs.pause(event.describe())
            await self.role.detach()
            return
        attempt = 0
        while True:
            await set_serving(self.health, False, self.health_names)
            try:
                await self.role.reconnect()
                break
            except Exception as exc:  # the broker flapped: NOT_SERVING until it works
                attempt += 1
                held = self._warnings.admit("reconnect")
                if held is not None:
                    log.warning("%s: reconnecting to the broker failed %d time(s) (%s); "
                                "retrying", self.role.name, attempt, exc)
                await asyncio.sleep(min(0.5 * 2 ** min(attempt, 10), self.max_wait_s))
            if self.closed:
                return
        if self.jobs is not None:
            await self.jobs.resume(event)
        if not self.closed:
            await set_serving(self.health, True, self.health_names)
            log.info("%s serving again (%s)", self.role.name, event.describe())
