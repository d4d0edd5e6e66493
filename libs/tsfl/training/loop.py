"""Local training and evaluation loops used by :class:`~tsfl.sdk.client.TorchClient`.

FedProx's proximal term (Li et al., MLSys 2020, eq. 2), μ/2 ‖w − w_t‖², is added
through its gradient μ (w − w_t) after each backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TrainSettings:
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    epochs: int = 1
    batch_size: int = 16
    proximal_mu: float = 0.0


def make_optimizer(params: list[nn.Parameter], s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    raise ValueError(f"unknown optimizer {s.optimizer!r}")


def train_epochs(module: nn.Module, params: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor,
                 settings: TrainSettings, rng: np.random.Generator) -> float:
    """Run local epochs of mini-batch training; return the mean training loss."""
    module.train()
    opt = make_optimizer(params, settings)
    anchors = [p.detach().clone() for p in params] if settings.proximal_mu > 0 else None
    n = len(y)
    total, seen = 0.0, 0
    for _ in range(settings.epochs):
        perm = torch.from_numpy(rng.permutation(n))
        for start in range(0, n, settings.batch_size):
            idx = perm[start:start + settings.batch_size]
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=False)
            loss = F.cross_entropy(module(xb), yb)
            loss.backward()
            if anchors is not None:
                with torch.no_grad():
                    for p, a in zip(params, anchors, strict=True):
                        if p.grad is None:  # not in this batch's graph: the term alone
                            p.grad = torch.zeros_like(p)
                        p.grad.add_(p - a, alpha=settings.proximal_mu)
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
    return total / max(seen, 1)


@torch.no_grad()
def evaluate(module: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y)."""
    module.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        logits = module(xb)
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(dim=1) == yb).sum())
    n = max(len(y), 1)
    return loss_sum / n, correct / n
