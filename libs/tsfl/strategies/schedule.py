"""Adaptive server learning rates: a schedule around any strategy (:class:`Scheduled`).

Each release ``t`` (counted from 0) the wrapped strategy's server learning rate is
``η_t = η · f_t``:

* cosine (Loshchilov & Hutter, "SGDR", ICLR 2017, eq. 5, one cycle, after a linear
  warm-up of ``w`` releases): ``f_t = m + (1 − m)·(1 + cos(π·(t − w)/(H − w)))/2``;
* step decay: ``f_t = γ^⌊t / s⌋``;
* loss trend (the "bold driver" rule, Battiti, "Accelerated backpropagation learning: two
  optimization methods", Complex Systems 3, 1989, §2; Vogl et al., Biol. Cybern. 59, 1988,
  applied to the server step with the clients' mean training loss ``L_t``): every ``w``
  releases, with ``A`` the mean of the last ``w`` losses and ``B`` the mean of the ``w``
  before them, ``f ← min(f_max, g·f)`` when ``A < B − m``, ``f ← max(f_min, s·f)`` when
  ``A > B + m``, else ``f`` is kept; the margin is ``m = tol·B + z·√(σ_A²/w + σ_B²/w)``
  (σ² the sample variances within each block: the standard error of ``A − B``).

  Battiti's rule compares consecutive losses of the *same* training set (full batch,
  deterministic). A federated round's ``L_t`` is the mean over a fresh random cohort of
  non-IID clients, so consecutive values differ mostly by which clients were drawn (on
  Synthetic(1, 1) with 20 of 1,000 clients: ±30 % round to round, rises and falls equally
  often). Compared one round to the next (``w = 1``, the rule before #21's look), the
  asymmetric ``g = 1.1``, ``s = 0.5`` then multiply ``f`` by ≈ √(1.1 · 0.5) ≈ 0.74 a round
  on average, whatever the model does: ``f`` hit its 0.01 floor within 10 rounds and the
  model stayed at the class prior. Blocks of ``w`` releases and the standard-error margin
  make the rule act on the trend, not the cohort draw; ``w = 1`` (no variance, so
  ``m = tol·B``) is Battiti's rule exactly, right when every round sees the same data.

Client learning rates by data size travel with each task (``lr_by_size``): the device
scales its own lr by ``(n_ref / n_k)^p``, clipped and rounded to ``2^{j/levels}``
(:func:`client_lr_scale`), so a client with many records, which takes more local steps,
does not drift further from the global model (the objective inconsistency of Wang et al.,
"FedNova", NeurIPS 2020, §3; the normalisation ``τ_eff / τ_k`` of their eq. 6 with
``p = 1``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tsfl.strategies.base import Strategy

KINDS = ("cosine", "step", "loss_trend")


class Scheduled(Strategy):
    """``inner`` with its server learning rate scheduled (and client lr options sent)."""

    name = "scheduled"

    def __init__(self, inner: Strategy, kind: str | None = None, *, horizon: int = 100,
                 min_factor: float = 0.0, max_factor: float = 4.0, warmup: int = 0,
                 step_every: int = 10, gamma: float = 0.5, grow: float = 1.1,
                 shrink: float = 0.5, tolerance: float = 0.01, window: int = 5,
                 z: float = 2.0, client_lr: dict[str, Any] | None = None):
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown lr schedule {kind!r}; choose from {KINDS}")
        if not hasattr(inner, "server_lr"):
            raise ValueError(f"strategy {inner.name!r} has no server learning rate")
        self.inner, self.kind = inner, kind
        self.base_lr = float(inner.server_lr)  # type: ignore[attr-defined]
        self.horizon, self.warmup = max(1, int(horizon)), max(0, int(warmup))
        self.min_factor, self.max_factor = float(min_factor), float(max_factor)
        self.step_every, self.gamma = max(1, int(step_every)), float(gamma)
        self.grow, self.shrink, self.tolerance = float(grow), float(shrink), float(tolerance)
        self.window, self.z = max(1, int(window)), float(z)
        self.client_lr = client_lr
        self.step = 0  # releases so far
        self.trend = 1.0  # the loss-trend factor
        self.losses: list[float] = []  # the loss trend's previous block, then the current

    def factor(self, t: int) -> float:
        """``f_t`` for release ``t`` (the loss trend's current factor for that rule)."""
        if self.kind == "cosine":
            if t < self.warmup:
                return (t + 1) / self.warmup
            span = max(1, self.horizon - self.warmup)
            x = min(1.0, (t - self.warmup) / span)
            m = self.min_factor
            return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * x))
        if self.kind == "step":
            return self.gamma ** (t // self.step_every)
        if self.kind == "loss_trend":
            return self.trend
        return 1.0

    def observe_loss(self, loss: float | None) -> None:
        """The round's (or buffer's) mean client training loss, before its release."""
        if loss is None or not math.isfinite(loss) or self.kind != "loss_trend":
            return
        self.losses.append(float(loss))
        w = self.window
        if len(self.losses) < 2 * w:
            return
        before, now = np.array(self.losses[:w]), np.array(self.losses[w:])
        spread = 0.0 if w == 1 else math.sqrt(float(before.var(ddof=1) + now.var(ddof=1)) / w)
        margin = self.tolerance * float(before.mean()) + self.z * spread
        if now.mean() < before.mean() - margin:
            self.trend = min(self.max_factor, self.trend * self.grow)
        elif now.mean() > before.mean() + margin:
            self.trend = max(max(self.min_factor, 0.01), self.trend * self.shrink)
        self.losses = self.losses[w:]  # the current block is the next one's reference

    @property
    def server_lr(self) -> float:
        return self.base_lr * self.factor(self.step)

    def aggregate_fit(self, current: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        self.inner.server_lr = self.server_lr  # type: ignore[attr-defined]
        try:
            return self.inner.aggregate_fit(current, mean_delta)
        finally:
            self.step += 1

    def client_config(self, server_round: int) -> dict[str, Any]:
        config = dict(self.inner.client_config(server_round))
        if self.client_lr is not None:
            config["lr_by_size"] = dict(self.client_lr)
        return config

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.inner.state())
        out.update({"schedule_step": self.step, "schedule_trend": self.trend,
                    "schedule_losses": np.array(self.losses, dtype=np.float64)})
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.step = int(state.pop("schedule_step", 0))
        self.trend = float(state.pop("schedule_trend", 1.0))
        losses = np.asarray(state.pop("schedule_losses", ()), dtype=np.float64).ravel()
        old = float(state.pop("schedule_loss", math.nan))  # a checkpoint from before blocks
        self.losses = [float(x) for x in losses] or ([] if math.isnan(old) else [old])
        self.inner.load_state(state)


def client_lr_scale(examples: int, options: dict[str, Any]) -> float:
    """A device's lr multiplier from its record count and the task's ``lr_by_size``
    (validated here: a task is untrusted input to the device)."""
    def num(key: str, default: float, lo: float, hi: float) -> float:
        v = options.get(key, default)
        if not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"lr_by_size.{key}={v!r} outside [{lo}, {hi}]")
        return float(v)

    ref = num("reference_examples", 100, 1, 1e9)
    power = num("power", 0.5, 0, 2)
    lo, hi = num("min_scale", 0.1, 1e-6, 1), num("max_scale", 4.0, 1, 100)
    levels = num("levels_per_octave", 4, 1, 64)
    scale = (ref / max(1, examples)) ** power
    scale = 2.0 ** (round(math.log2(scale) * levels) / levels)
    return min(hi, max(lo, scale))
