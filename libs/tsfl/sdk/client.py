"""Client APIs: a Flower-style ``NumPyClient`` and a ``TorchClient`` helper.

Implement :meth:`NumPyClient.fit` (and optionally :meth:`~NumPyClient.evaluate`) on
your local data; the :class:`~tsfl.sdk.runner.ClientRunner` handles the protocol.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import nn

from tsfl.sdk.dp_sgd import (
    DpSgdSettings,
    RecordAccountant,
    check_model,
    dp_sgd_epochs,
    dp_sgd_schedule,
)
from tsfl.sdk.privacy_guard import DevicePrivacy, TaskRefused
from tsfl.strategies.schedule import client_lr_scale
from tsfl.training.flat import FlatModule
from tsfl.training.loop import TrainSettings, evaluate, train_epochs

NDArrays = list[np.ndarray]


class NumPyClient(ABC):
    """A participant that trains on local data given the global parameters."""

    def get_parameters(self, config: dict[str, Any]) -> NDArrays:
        raise NotImplementedError("this client does not provide initial parameters")

    @abstractmethod
    def fit(self, parameters: NDArrays, config: dict[str, Any]
            ) -> tuple[NDArrays, int, dict[str, float]]:
        """Train from ``parameters``; return new parameters, #examples and metrics."""

    def evaluate(self, parameters: NDArrays, config: dict[str, Any]
                 ) -> tuple[float, int, dict[str, float]]:
        raise NotImplementedError("this client does not evaluate")


class TorchClient(NumPyClient):
    """A ready client over a torch module and local tensors (x, y).

    Several simulated clients may share one :class:`FlatModule` (they run one after
    another); each call loads the global parameters first.
    """

    #: a SecAgg+ device (keys, identity) for the runner to use: a fleet sets one per client
    secagg_device: Any = None

    def __init__(self, model: nn.Module | FlatModule, x: np.ndarray | torch.Tensor,
                 y: np.ndarray | torch.Tensor, settings: TrainSettings | None = None,
                 dp_sgd: DpSgdSettings | None = None, privacy: DevicePrivacy | None = None):
        """``dp_sgd`` trains with record-level DP-SGD (:mod:`tsfl.sdk.dp_sgd`) on the
        device's own randomness (``privacy``, a CSPRNG by default); the client's ε so far
        is :attr:`record_epsilon`, kept on the device — never uploaded. A round that
        would take it past ``privacy.floor.max_epsilon`` is refused before training."""
        self.flat = model if isinstance(model, FlatModule) else FlatModule(model)
        self._set_records(x, y)
        self.settings = settings or TrainSettings()
        self.dp_sgd = dp_sgd
        self.privacy = privacy or DevicePrivacy()
        if dp_sgd is not None:
            floor = self.privacy.floor.min_noise_multiplier
            if floor is not None and dp_sgd.noise_multiplier < floor:
                raise ValueError(f"dp_sgd.noise_multiplier {dp_sgd.noise_multiplier:g} is "
                                 f"below this device's floor {floor:g}")
        self.record_accountant = RecordAccountant(dp_sgd) if dp_sgd is not None else None
        if dp_sgd is not None:
            check_model(self.flat.module)

    def _set_records(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor
                     ) -> None:
        self.x = torch.as_tensor(x)
        self.y = torch.as_tensor(y, dtype=torch.long)
        if len(self.x) != len(self.y) or len(self.y) == 0:
            raise ValueError("a TorchClient needs the same, non-zero number of inputs and labels")

    @property
    def layout(self):
        return self.flat.layout

    def _settings(self, config: dict[str, Any]) -> TrainSettings:
        """The task's training settings over this client's. Under DP-SGD the sampling
        rate and the step count are privacy parameters, so epochs and batch size stay the
        device's: a server cannot spend more of its records' budget by asking."""
        s = self.settings
        keys = ("lr", "proximal_mu") if self.dp_sgd is not None else (
            "lr", "epochs", "batch_size", "proximal_mu")
        overrides = {k: config[k] for k in keys if k in config}
        if isinstance(config.get("lr_by_size"), dict):  # strategy.client_lr: by data size
            n = getattr(self, "num_examples", None)
            scale = client_lr_scale(n if isinstance(n, int) else len(self.y),
                                    config["lr_by_size"])
            overrides["lr"] = float(overrides.get("lr", s.lr)) * scale
        return TrainSettings(**{**s.__dict__, **overrides}) if overrides else s

    def fit_vector(self, vector: np.ndarray, config: dict[str, Any]
                   ) -> tuple[np.ndarray, int, dict[str, float]]:
        """Fast path: train from a flat float32 vector and return the new one (a view)."""
        self.flat.load(vector)
        seed = config.get("seed")
        rng = np.random.default_rng(seed)
        if self.dp_sgd is None:
            loss = train_epochs(self.flat.module, self.flat.params, self.x, self.y,
                                self._settings(config), rng)
            return self.flat.vector, len(self.y), {"train_loss": loss}
        assert self.record_accountant is not None
        settings = self._settings(config)
        cap = self.privacy.floor.max_epsilon
        if cap is not None:
            after = self.record_accountant.epsilon_after(*dp_sgd_schedule(len(self.y),
                                                                          settings))
            if after > cap:
                raise TaskRefused("budget", f"this round's DP-SGD would spend record-level "
                                  f"ε={after:.4g} on this device, above its cap {cap:g}")
        out = dp_sgd_epochs(self.flat.module, self.flat.params, self.x, self.y,
                            settings, self.dp_sgd, self.privacy.source("dp-sgd"))
        self.record_accountant.charge(out["sampling_rate"], out["steps"])
        self.last_dp_sgd = out  # the device's own view of the round (not uploaded)
        return self.flat.vector, len(self.y), {}

    @property
    def record_epsilon(self) -> float | None:
        """This device's record-level ε so far (DP-SGD), or None without DP-SGD."""
        return self.record_accountant.epsilon if self.record_accountant is not None else None

    def get_parameters(self, config: dict[str, Any]) -> NDArrays:
        return self.flat.layout.unflatten_list(self.flat.vector)

    def fit(self, parameters: NDArrays, config: dict[str, Any]
            ) -> tuple[NDArrays, int, dict[str, float]]:
        vec, n, metrics = self.fit_vector(self.flat.layout.flatten_list(parameters), config)
        return self.flat.layout.unflatten_list(vec), n, metrics

    def evaluate(self, parameters: NDArrays, config: dict[str, Any]
                 ) -> tuple[float, int, dict[str, float]]:
        self.flat.load(self.flat.layout.flatten_list(parameters))
        loss, acc = evaluate(self.flat.module, self.x, self.y)
        return loss, len(self.y), {"accuracy": acc}
