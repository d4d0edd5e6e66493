"""The parties of split training and their models.

A feature party k holds columns X_k and a bottom model f_k; the label party holds y and a
top model g. For a batch B, e_k = f_k(X_k[B]) crosses to the label party, which computes
L = CE(g(e_1, …, e_K), y_B), steps g, and returns ∂L/∂e_k to each party, which
back-propagates it through f_k (Vepakomma et al., "Split learning for health", 2018;
Gupta & Raskar 2018).

``logreg``: f_k(x) = W_k x (a linear map to the K class logits, no bias) and
g(e) = Σ_k e_k + b — exactly multinomial logistic regression on the concatenated columns
(the gradient-sum form of vertical LR, Hardy et al. 2017, without its HE layer).
``split_nn``: f_k an MLP to ``cut`` units, g an MLP on the concatenated cuts.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tsfl.vertical.protection import CutLayerDP


def _mlp(sizes: Sequence[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def bottom_model(kind: str, inputs: int, classes: int, cut: int,
                 hidden: Sequence[int]) -> nn.Module:
    if kind == "logreg":
        return nn.Linear(inputs, classes, bias=False)
    return _mlp([inputs, *hidden, cut], last_activation=True)


def cut_width(kind: str, classes: int, cut: int) -> int:
    return classes if kind == "logreg" else cut


class SumTop(nn.Module):
    """g(e) = Σ_k e_k + b (vertical logistic regression)."""

    def __init__(self, parts: int, classes: int):
        super().__init__()
        self.parts = parts
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return e.reshape(e.shape[0], self.parts, -1).sum(dim=1) + self.bias


def top_model(kind: str, parts: int, classes: int, cut: int,
              hidden: Sequence[int]) -> nn.Module:
    if kind == "logreg":
        return SumTop(parts, classes)
    return _mlp([parts * cut, *hidden, classes], last_activation=False)


def _optimizer(params: list[torch.nn.Parameter], name: str, lr: float,
               weight_decay: float) -> torch.optim.Optimizer:
    """SGD or Adam; ``weight_decay`` is an L2 penalty λ/2‖w‖² on the mean loss
    (scikit-learn's ``C`` corresponds to λ = 1/(C·n))."""
    return (torch.optim.Adam(params, lr=lr, weight_decay=weight_decay) if name == "adam"
            else torch.optim.SGD(params, lr=lr, weight_decay=weight_decay))


@dataclass
class FeatureParty:
    """Holds its columns (rows in the common order) and its bottom model."""

    name: str
    x: np.ndarray  # float32 [n_aligned, d_k]
    model: nn.Module
    lr: float
    optimizer: str = "sgd"
    dp: CutLayerDP | None = None
    weight_decay: float = 0.0
    x_test: np.ndarray | None = None  # float32 [n_test_aligned, d_k]
    _opt: torch.optim.Optimizer = field(init=False, repr=False)
    _pending: torch.Tensor | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self._opt = _optimizer(list(self.model.parameters()), self.optimizer, self.lr,
                               self.weight_decay)

    def activations(self, rows: np.ndarray, train: bool) -> np.ndarray:
        """e_k for ``rows`` (clipped and noised under cut-layer DP); keeps the graph for
        :meth:`backward` when ``train``."""
        self.model.train(train)
        with torch.set_grad_enabled(train):
            out = self.model(torch.from_numpy(self.x[rows]))
            if self.dp is not None:
                out = self.dp.clip_rows(out)
        self._pending = out if train else None
        values = out.detach().numpy().astype(np.float32)
        return self.dp.noised(values) if self.dp is not None else values

    def test_activations(self) -> np.ndarray:
        """e_k for every held-out row (protected like the training ones)."""
        if self.x_test is None:
            raise RuntimeError("no held-out rows")
        keep, self.x = self.x, self.x_test
        try:
            return self.activations(np.arange(len(self.x_test)), False)
        finally:
            self.x = keep

    def backward(self, grad: np.ndarray) -> None:
        """Back-propagate ∂L/∂e_k from the label party through the bottom model."""
        if self._pending is None:
            raise RuntimeError("no forward pass is waiting for its gradient")
        self._opt.zero_grad()
        self._pending.backward(torch.from_numpy(grad))
        self._opt.step()
        self._pending = None


@dataclass
class LabelParty:
    """Holds the (possibly randomized-response) training labels and the top model."""

    y_train: np.ndarray  # int64 labels used for every gradient (ỹ under label DP)
    model: nn.Module
    lr: float
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    _opt: torch.optim.Optimizer = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._opt = _optimizer(list(self.model.parameters()), self.optimizer, self.lr,
                               self.weight_decay)

    def step(self, rows: np.ndarray, parts: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """One batch: loss on the received activations, top-model step, and ∂L/∂e_k for
        each part."""
        self.model.train()
        inputs = [torch.from_numpy(p).requires_grad_(True) for p in parts]
        logits = self.model(torch.cat(inputs, dim=1))
        loss = nn.functional.cross_entropy(logits, torch.from_numpy(self.y_train[rows]))
        self._opt.zero_grad()
        loss.backward()
        self._opt.step()
        return [t.grad.numpy().astype(np.float32) for t in inputs  # type: ignore[union-attr]
                ], float(loss.detach())

    def predict(self, parts: list[np.ndarray]) -> np.ndarray:
        """Class probabilities for the received (evaluation) activations."""
        self.model.eval()
        with torch.no_grad():
            logits = self.model(torch.cat([torch.from_numpy(p) for p in parts], dim=1))
            return torch.softmax(logits, dim=1).numpy()
