"""The job's server strategy, with its learning-rate schedule and client-lr options
(``strategy.lr_schedule``, ``strategy.client_lr``): one place for every stage that
builds it (the coordinator's task config, the release stage, the async simulation)."""

from __future__ import annotations

import math
from typing import Any

from tsfl.config import JobSpec
from tsfl.strategies import Strategy, build_strategy
from tsfl.strategies.schedule import Scheduled


def strategy_from_spec(spec: JobSpec) -> Strategy:
    """The named strategy, wrapped in :class:`Scheduled` when the spec adapts its learning
    rates (else the plain strategy: today's objects, today's results)."""
    s = spec.strategy
    inner = build_strategy(s.name, **s.params())
    if s.lr_schedule is None and s.client_lr is None:
        return inner
    options: dict[str, Any] = {}
    if s.lr_schedule is not None:
        sched = s.lr_schedule
        horizon = sched.horizon or (s.fedbuff.releases or spec.rounds
                                    if s.mode == "async" else spec.rounds)
        options = dict(horizon=horizon, min_factor=sched.min_factor,
                       max_factor=sched.max_factor, warmup=sched.warmup,
                       step_every=sched.step_every, gamma=sched.gamma, grow=sched.grow,
                       shrink=sched.shrink, tolerance=sched.tolerance,
                       window=sched.window, z=sched.z)
    client_lr = s.client_lr.model_dump(exclude={"rule"}) if s.client_lr is not None else None
    return Scheduled(inner, s.lr_schedule.kind if s.lr_schedule else None,
                     client_lr=client_lr, **options)


def observe_loss(strategy: Strategy, loss: Any) -> None:
    """Feed a release's mean client training loss to a loss-trend schedule."""
    if isinstance(strategy, Scheduled) and isinstance(loss, int | float) and math.isfinite(
            loss):
        strategy.observe_loss(float(loss))
