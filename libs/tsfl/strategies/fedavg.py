"""FedAvg and FedProx (server side).

FedAvg — McMahan et al., AISTATS 2017, eq. (2): x_{t+1} = x_t + η Δ_t, η = 1.
FedProx — Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys
2020), eq. (2): clients minimise F_k(w) + μ/2 ‖w − w_t‖²; the server averages
exactly like FedAvg. The proximal term is applied in local training
(:mod:`tsfl.sim.training`), announced to clients through :meth:`client_config`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tsfl.strategies.base import Strategy


class FedAvg(Strategy):
    """Example-weighted averaging, optionally with a server learning rate η."""

    name = "fedavg"

    def __init__(self, server_lr: float = 1.0):
        self.server_lr = float(server_lr)

    def aggregate_fit(self, current: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        if self.server_lr != 1.0:
            mean_delta *= np.float32(self.server_lr)
        mean_delta += current
        return mean_delta


class FedProx(FedAvg):
    """FedAvg on the server plus the proximal term μ/2 ‖w − w_t‖² on clients."""

    name = "fedprox"

    def __init__(self, mu: float = 0.01, server_lr: float = 1.0):
        super().__init__(server_lr=server_lr)
        if mu < 0:
            raise ValueError("FedProx mu must be >= 0")
        self.mu = float(mu)

    def client_config(self, server_round: int) -> dict[str, Any]:
        return {"proximal_mu": self.mu}
