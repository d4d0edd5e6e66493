"""Adaptive server optimizers: FedAdagrad, FedAdam, FedYogi.

Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2. With
the round's mean delta Δ_t as the pseudo-gradient's negative:

    m_t = β₁ m_{t−1} + (1 − β₁) Δ_t
    v_t = v_{t−1} + Δ_t²                                   (FedAdagrad)
    v_t = β₂ v_{t−1} + (1 − β₂) Δ_t²                       (FedAdam)
    v_t = v_{t−1} − (1 − β₂) Δ_t² sign(v_{t−1} − Δ_t²)     (FedYogi)
    x_{t+1} = x_t + η m_t / (√v_t + τ)

``initial_accumulator`` is v_{−1} (the paper suggests ≥ τ²; Flower uses 0, our
default too). ``bias_correction`` scales η by √(1 − β₂ᵗ)/(1 − β₁ᵗ) as in Adam
(Kingma & Ba 2015, §2), t counting server steps from 1; the paper's algorithm
has none, Flower's FedAdam has it (with t offset by one round).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tsfl.strategies.base import Strategy


class FedOpt(Strategy):
    """Shared machinery; subclasses define the second-moment update."""

    name = "fedopt"

    def __init__(
        self,
        server_lr: float = 0.1,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        initial_accumulator: float = 0.0,
        bias_correction: bool = False,
    ):
        if server_lr <= 0:
            raise ValueError("server_lr (η) must be > 0")
        if not 0.0 <= beta1 < 1.0 or not 0.0 <= beta2 < 1.0:
            raise ValueError("beta1 and beta2 must be in [0, 1)")
        if tau <= 0:
            raise ValueError("tau must be > 0")
        self.server_lr = float(server_lr)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.tau = float(tau)
        self.initial_accumulator = float(initial_accumulator)
        self.bias_correction = bool(bias_correction)
        self._m: np.ndarray | None = None
        self._v: np.ndarray | None = None
        self._steps = 0

    def _update_second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> None:
        raise NotImplementedError

    def aggregate_fit(self, current: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        f32 = np.float32
        if self._m is None or self._v is None:
            self._m = np.zeros_like(mean_delta)
            self._v = np.full_like(mean_delta, self.initial_accumulator)
        self._steps += 1
        m, v = self._m, self._v
        m *= f32(self.beta1)
        m += f32(1.0 - self.beta1) * mean_delta
        delta_sq = np.square(mean_delta)
        self._update_second_moment(v, delta_sq)
        lr = self.server_lr
        if self.bias_correction:
            t = self._steps
            lr *= np.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)
        # x_{t+1} = x_t + η m / (√v + τ), computed in the mean_delta buffer.
        np.sqrt(v, out=delta_sq)
        delta_sq += f32(self.tau)
        np.divide(m, delta_sq, out=mean_delta)
        mean_delta *= f32(lr)
        mean_delta += current
        return mean_delta

    def state(self) -> dict[str, Any]:
        if self._m is None or self._v is None:
            return {}
        return {"m": self._m.copy(), "v": self._v.copy(), "steps": self._steps}

    def load_state(self, state: dict[str, Any]) -> None:
        if not state:
            self._m = self._v = None
            self._steps = 0
            return
        self._m = np.asarray(state["m"], np.float32).copy()
        self._v = np.asarray(state["v"], np.float32).copy()
        self._steps = int(state["steps"])


class FedAdagrad(FedOpt):
    name = "fedadagrad"

    def __init__(self, server_lr: float = 0.1, beta1: float = 0.0, tau: float = 1e-9, **kw: Any):
        super().__init__(server_lr=server_lr, beta1=beta1, beta2=0.0, tau=tau, **kw)

    def _update_second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> None:
        v += delta_sq


class FedAdam(FedOpt):
    name = "fedadam"

    def __init__(self, server_lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-9, **kw: Any):
        super().__init__(server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau, **kw)

    def _update_second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> None:
        v *= np.float32(self.beta2)
        v += np.float32(1.0 - self.beta2) * delta_sq


class FedYogi(FedOpt):
    name = "fedyogi"

    def __init__(self, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3, **kw: Any):
        super().__init__(server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau, **kw)

    def _update_second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> None:
        v -= np.float32(1.0 - self.beta2) * delta_sq * np.sign(v - delta_sq)
