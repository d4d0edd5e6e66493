"""FedAvgM: FedAvg with server momentum.

Hsu, Qi & Brown, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification" (2019), Algorithm 1, written on the
pseudo-gradient g_t = −Δ_t:

    v_t = β v_{t−1} + g_t        (v_0 = g_0 on the first round)
    x_{t+1} = x_t − η v_t

This matches Flower's ``FedAvg(server_momentum=β, server_learning_rate=η)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tsfl.strategies.base import Strategy


class FedAvgM(Strategy):
    name = "fedavgm"

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9):
        if not 0.0 <= momentum < 1.0:
            raise ValueError("server momentum must be in [0, 1)")
        self.server_lr = float(server_lr)
        self.momentum = float(momentum)
        self._velocity: np.ndarray | None = None

    def aggregate_fit(self, current: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        # Work on the step s_t = −g_t = Δ_t: v ← β v + Δ, x ← x + η v.
        if self._velocity is None:
            self._velocity = mean_delta.copy()
        else:
            self._velocity *= np.float32(self.momentum)
            self._velocity += mean_delta
        np.multiply(self._velocity, np.float32(self.server_lr), out=mean_delta)
        mean_delta += current
        return mean_delta

    def state(self) -> dict[str, Any]:
        return {} if self._velocity is None else {"velocity": self._velocity.copy()}

    def load_state(self, state: dict[str, Any]) -> None:
        velocity = state.get("velocity")
        self._velocity = None if velocity is None else np.asarray(velocity, np.float32).copy()
