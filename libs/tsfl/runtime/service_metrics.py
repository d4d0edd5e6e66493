"""A service's own health as metrics: broker reachability and consumer lag, sampled."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tsfl.bus.liveness import BrokerWatch
from tsfl.metrics import instruments
from tsfl.pipeline.role import BusRole

log = logging.getLogger("tsfl.service_metrics")


class ServiceGauges:
    """Every ``interval_s``: ``tsfl_broker_reachable{stage}`` (1/0) from the broker watch
    and ``tsfl_consumer_lag_records{stage}`` from the role's consumer."""

    def __init__(self, stage: str, watch: BrokerWatch, role: BusRole,
                 interval_s: float = 5.0):
        self.stage, self.watch, self.role, self.interval_s = stage, watch, role, interval_s
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        m, attrs = instruments(), {"stage": self.stage}
        m.broker_reachable.set(1 if self.watch.reachable else 0, attrs)
        consumer = self.role._consumer
        lag = getattr(consumer, "lag", None)
        if lag is not None and self.watch.reachable:
            value = await lag()
            if value is not None:
                m.consumer_lag.set(value, attrs)

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception as exc:  # a metric must never take the service down
                log.debug("sampling service gauges failed: %s", exc)
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"tsfl-{self.stage}-gauges")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
