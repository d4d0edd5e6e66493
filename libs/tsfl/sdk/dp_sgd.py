"""Record-level DP-SGD for a client's local training (Abadi et al., "Deep Learning with
Differential Privacy", CCS 2016, Algorithm 1).

Each step Poisson-samples the client's records at rate q = B/n, computes one gradient per
record (``torch.func``: ``vmap`` of ``grad`` over a functional call of the module, so no
Python loop over records), clips each to L2 norm C, sums them, adds N(0, σ²C²) to the sum
and divides by the expected batch size qn (a fixed denominator, so a record's presence
changes only the sum). One step is a Poisson-subsampled Gaussian mechanism of noise
multiplier σ on the client's dataset (add/remove one record); the client's ε over all its
steps, in every round it took part in, comes from the same dp-accounting PLD accountant
the server uses (:class:`~tsfl.privacy.accounting.PrivacyAccountant`).

This protects each record of a silo against everyone who sees its updates, the server
included; it composes with (and does not replace) client-level DP on the server. Both
the batches and the noise come from the device's own randomness
(:meth:`~tsfl.sdk.privacy_guard.DevicePrivacy.source`, a CSPRNG), never from the task:
a server that knew the batches could tell which steps a record was in, and the
amplification by sampling that the accountant credits would not hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from tsfl.errors import TsflError
from tsfl.privacy.accounting import PrivacyAccountant, RoundEvent
from tsfl.privacy.noise import NoiseSource
from tsfl.training.loop import TrainSettings, make_optimizer

_BATCH_COUPLING = (nn.modules.batchnorm._BatchNorm,)


class DpSgdError(TsflError, ValueError):
    """DP-SGD settings or a model it cannot train privately."""


@dataclass(frozen=True)
class DpSgdSettings:
    noise_multiplier: float  # σ: noise std over the per-record clip norm
    max_grad_norm: float  # C: each record's gradient is clipped to this L2 norm
    delta: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "max_grad_norm"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise DpSgdError(f"dp_sgd.{name} must be a finite number > 0, got {value!r}")
        if not 0.0 < self.delta < 1.0:
            raise DpSgdError(f"dp_sgd.delta must be in (0, 1), got {self.delta!r}")


class RecordAccountant:
    """One client's record-level ε: its DP-SGD steps, composed at its sampling rate."""

    def __init__(self, settings: DpSgdSettings):
        self.settings = settings
        self.accountant = PrivacyAccountant(settings.delta, 1e-3)

    def _event(self, sampling_rate: float) -> RoundEvent:
        return RoundEvent("gaussian", "poisson" if sampling_rate < 1 else "none",
                          sampling_rate, self.settings.noise_multiplier)

    def charge(self, sampling_rate: float, steps: int) -> None:
        self.accountant.compose(self._event(sampling_rate), steps)

    def epsilon_after(self, sampling_rate: float, steps: int) -> float:
        """ε once ``steps`` more steps at ``sampling_rate`` are taken (nothing recorded)."""
        return self.accountant.epsilon_after(self._event(sampling_rate), steps).epsilon

    @property
    def steps(self) -> int:
        return self.accountant.rounds

    @property
    def epsilon(self) -> float:
        return self.accountant.epsilons().epsilon


def check_model(module: nn.Module) -> None:
    """Refuse layers that mix records of a batch (their per-record gradient is undefined)."""
    for name, sub in module.named_modules():
        if isinstance(sub, _BATCH_COUPLING):
            raise DpSgdError(f"DP-SGD needs per-record gradients, and {name or 'the model'} "
                             f"({type(sub).__name__}) mixes the records of a batch: use "
                             "GroupNorm or LayerNorm")


def per_sample_gradients(module: nn.Module, x: torch.Tensor, y: torch.Tensor
                         ) -> torch.Tensor:
    """The gradient of each record's cross-entropy, as rows of a [len(y), D] matrix (D:
    the module's parameters, flattened in ``named_parameters`` order)."""
    named = {n: p.detach() for n, p in module.named_parameters()}
    buffers = {n: b for n, b in module.named_buffers()}

    def loss_one(params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor
                 ) -> torch.Tensor:
        out = functional_call(module, (params, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0), randomness="different")(named, x, y)
    return torch.cat([grads[n].reshape(len(y), -1) for n in named], dim=1)


def clipped_sum(per_sample: torch.Tensor, max_norm: float) -> tuple[torch.Tensor, int]:
    """Σᵢ gᵢ · min(1, C/‖gᵢ‖₂) and how many records were within C."""
    norms = per_sample.norm(dim=1)
    factors = (max_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
    return per_sample.T @ factors, int((norms <= max_norm).sum())


def dp_sgd_schedule(n: int, settings: TrainSettings) -> tuple[float, int]:
    """(sampling rate q = B/n, steps = epochs · ⌈n/B⌉) of one round of local DP-SGD."""
    return min(1.0, settings.batch_size / n), settings.epochs * math.ceil(n / settings.batch_size)


def dp_sgd_epochs(module: nn.Module, params: list[nn.Parameter], x: torch.Tensor,
                  y: torch.Tensor, settings: TrainSettings, dp: DpSgdSettings,
                  source: NoiseSource) -> dict[str, Any]:
    """``settings.epochs`` passes of DP-SGD (⌈n/B⌉ Poisson-sampled steps each).

    ``source`` is the device's randomness: it draws both the batches and the noise.
    Returns the mean training loss, the steps taken and the sampling rate (to charge).
    """
    check_model(module)
    module.train()
    n = len(y)
    q, steps = dp_sgd_schedule(n, settings)
    noise = source
    opt = make_optimizer(params, settings)
    named = [p for _, p in module.named_parameters()]
    sizes = [p.numel() for p in named]
    dim = sum(sizes)
    anchors = [p.detach().clone() for p in named] if settings.proximal_mu > 0 else None
    sigma = dp.noise_multiplier * dp.max_grad_norm
    loss_sum, seen, within = 0.0, 0, 0
    for _ in range(steps):
        idx = torch.from_numpy(np.flatnonzero(source.uniform(n) < q))
        total = torch.zeros(dim)
        if len(idx):
            xb, yb = x[idx], y[idx]
            total, ok = clipped_sum(per_sample_gradients(module, xb, yb), dp.max_grad_norm)
            within += ok
            with torch.no_grad():
                loss_sum += float(F.cross_entropy(module(xb), yb, reduction="sum"))
            seen += len(idx)
        total = total + torch.from_numpy(noise.normal(dim).astype(np.float32)) * sigma
        update = total / (q * n)
        opt.zero_grad(set_to_none=False)
        offset = 0
        for p, size in zip(named, sizes, strict=True):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(update[offset:offset + size].view_as(p))
            offset += size
        if anchors is not None:
            with torch.no_grad():
                for p, a in zip(named, anchors, strict=True):
                    assert p.grad is not None  # set from the noised update just above
                    p.grad.add_(p - a, alpha=settings.proximal_mu)
        opt.step()
    return {"train_loss": loss_sum / max(seen, 1), "steps": steps, "sampling_rate": q,
            "unclipped_fraction": within / max(seen, 1)}
