"""Local training of a whole cohort at once: one vectorised step for all its clients.

The sequential loop (:func:`tsfl.training.loop.train_epochs`) trains client k alone: for
each epoch e it draws ``perm = rng_k.permutation(n_k)`` and steps through the batches
``perm[jB:(j+1)B]``, the last one short when B ∤ n_k, with the batch-mean loss

    L_k,t(θ) = (1 / b_k,t) Σ_{i ∈ batch_k,t} ℓ(f(x_i; θ), y_i),   b_k,t = |batch_k,t|,

then its optimizer step (FedProx adds μ (θ − θ_start) to the gradient first). Client k
takes T_k = E·⌈n_k / B⌉ steps. Here K clients run the same steps side by side: each
parameter tensor is stacked over clients ([K, …]; Θ_k is client k's), and step t evaluates

    ∇L_k,t(Θ_k)  for every k with T_k > t        (``torch.func.vmap`` over clients of
                                                  ``grad`` of ``functional_call``)

Every client's step-t batch is gathered as B row indices (a client whose batch is short,
b_k,t < B, the last of an epoch when B ∤ n_k, pads with index 0); one vmapped call takes
the step for all of them with the loop's own batch-mean loss, and the clients with a short
batch are then redone exactly on their b records alone — grouped by b, one vmapped call
per size, or one plain autograd call per client for a group smaller than
:data:`SHORT_VMAP` — so no gradient ever includes a padded record, and each client's
computation has the shapes, hence the kernels and the floating-point summation order, of
the loop's: in our measurements the trained models are bit-identical to the loop's (the
reported loss may differ in the last bits: vmap evaluates the mean differently).
Clients are sorted by T_k, longest first, so the clients still training at step t are a
prefix of the rows: finished clients take no step (their optimizer state does not
advance) and cost nothing. Each client keeps its own seed, shuffles, epochs and
optimizer state; the optimizers (SGD with momentum and weight decay, Adam) apply
``torch.optim``'s single-tensor update on the rows, op for op.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from tsfl.core.layout import ParamLayout
from tsfl.training.loop import TrainSettings

#: modules whose training-mode forward is random or stateful: never batched
_IMPURE = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm,
           nn.modules.instancenorm._InstanceNorm)

#: default bound on one chunk's working memory (parameters, optimizer state, data)
DEFAULT_CHUNK_BYTES = 256 << 20
#: fewer short batches of one size than this are redone one client at a time (plain
#: autograd, ~0.3 ms each) rather than in one vmapped call (~2 ms of fixed cost)
SHORT_VMAP = 6


@dataclass(frozen=True)
class Member:
    """One client of a batched cohort: its records and its task's shuffle seed."""

    x: torch.Tensor
    y: torch.Tensor
    seed: int | None


@dataclass
class CohortResult:
    vectors: np.ndarray  # float32 [K, P]: row k is member k's model after training
    losses: np.ndarray  # float64 [K]: member k's mean training loss, as train_epochs's


def unbatchable(module: nn.Module, layout: ParamLayout) -> str | None:
    """Why ``module`` cannot be trained batched (``None``: it can). A batchable module is
    a pure function of its parameters: no buffers (running statistics), no dropout or
    batch statistics in training mode, and every tensor of the layout a parameter."""
    if any(True for _ in module.buffers()):
        return "the model has buffers (e.g. BatchNorm running statistics)"
    impure = next((type(m).__name__ for m in module.modules() if isinstance(m, _IMPURE)),
                  None)
    if impure is not None:
        return f"the model has a {impure} layer (random or batch-dependent in training)"
    names = [n for n, _ in module.named_parameters()]
    if sorted(names) != sorted(s.name for s in layout.specs):
        return "the model's parameters are not exactly its flat layout"
    return None


def steps_of(n: int, settings: TrainSettings) -> int:
    """T = E·⌈n / B⌉: the optimizer steps of a client with ``n`` records."""
    return settings.epochs * math.ceil(n / settings.batch_size)


def chunk_bytes(n: int, record_bytes: int, size: int, settings: TrainSettings) -> int:
    """Working memory of one client in a chunk: its parameters with gradient and
    optimizer state, its records, its batch indices (and slack)."""
    states = 2 + (1 if settings.momentum and settings.optimizer == "sgd" else 0) + (
        2 if settings.optimizer == "adam" else 0)
    return (4 * size * (states + 1) + n * (record_bytes + 8)
            + steps_of(n, settings) * settings.batch_size * 12)


def plan_chunks(sizes: Sequence[int], record_bytes: int, size: int,
                settings: TrainSettings, max_bytes: int = DEFAULT_CHUNK_BYTES
                ) -> list[list[int]]:
    """Consecutive groups of members whose working memory stays within ``max_bytes``
    (a member larger than that is a chunk alone)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    used = 0
    for k, n in enumerate(sizes):
        need = chunk_bytes(int(n), record_bytes, size, settings)
        if current and used + need > max_bytes:
            chunks.append(current)
            current, used = [], 0
        current.append(k)
        used += need
    if current:
        chunks.append(current)
    return chunks


def _batch_rows(members: Sequence[Member], order: np.ndarray, settings: TrainSettings,
                offsets: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Row indices [K, S, B] of every member's batches, in ``order``, −1 where padded:
    each member's own ``default_rng(seed)`` draws one permutation per epoch, exactly as
    the sequential loop does."""
    b = settings.batch_size
    rows = np.full((len(order), int(steps.max()), b), -1, dtype=np.int64)
    for rank, k in enumerate(order):
        n = len(members[k].y)
        nb = math.ceil(n / b)
        rng = np.random.default_rng(members[k].seed)
        padded = np.full(nb * b, -1, dtype=np.int64)
        for e in range(settings.epochs):
            padded[:n] = rng.permutation(n) + offsets[k]
            rows[rank, e * nb:(e + 1) * nb] = padded.reshape(nb, b)
    return rows


def _short_batches(counts: np.ndarray, batch_size: int
                   ) -> list[tuple[int, torch.Tensor]]:
    """The rows whose batch at this step is short, grouped by its size b < B."""
    return [(int(b), torch.from_numpy(np.flatnonzero(counts == b)))
            for b in np.unique(counts[counts < batch_size])]


class _RowOptimizer:
    """``torch.optim``'s SGD / Adam (single-tensor update) on stacked parameters
    [K, ...]: row k's state advances only on the steps row k takes."""

    def __init__(self, params: list[torch.Tensor], s: TrainSettings):
        if s.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {s.optimizer!r}")
        self.s = s
        zeros = [torch.zeros_like(p) for p in params] if (
            s.optimizer == "adam" or s.momentum) else None
        self.buf = zeros if s.optimizer == "sgd" else None  # momentum buffers
        self.m1 = zeros if s.optimizer == "adam" else None
        self.m2 = [torch.zeros_like(p) for p in params] if s.optimizer == "adam" else None

    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor], t: int) -> None:
        """Step ``t`` (0-based) of the active rows: ``params`` are prefix views [m, ...]."""
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            self._step(i, p, g, t)

    def _step(self, i: int, p: torch.Tensor, g: torch.Tensor, t: int) -> None:
        s, m = self.s, len(p)
        if s.weight_decay != 0:
            g = g.add(p, alpha=s.weight_decay)
        if s.optimizer == "sgd":
            if self.buf is not None:
                buf = self.buf[i][:m]
                if t == 0:
                    buf.copy_(g)
                else:
                    buf.mul_(s.momentum).add_(g, alpha=1)
                g = buf
            p.add_(g, alpha=-s.lr)
            return
        assert self.m1 is not None and self.m2 is not None
        beta1, beta2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults (make_optimizer)
        m1, m2 = self.m1[i][:m], self.m2[i][:m]
        m1.lerp_(g, 1 - beta1)
        m2.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step = float(t + 1)
        step_size = s.lr / (1 - beta1 ** step)
        denom = (m2.sqrt() / (1 - beta2 ** step) ** 0.5).add_(eps)
        p.addcdiv_(m1, denom, value=-step_size)


def _train_chunk(module: nn.Module, layout: ParamLayout, start: torch.Tensor,
                 members: Sequence[Member], s: TrainSettings,
                 ) -> tuple[torch.Tensor, np.ndarray]:
    sizes = np.array([len(m.y) for m in members], dtype=np.int64)
    steps = np.array([steps_of(int(n), s) for n in sizes], dtype=np.int64)
    order = np.argsort(-steps, kind="stable")  # longest first: active rows are a prefix
    offsets = np.zeros(len(members), dtype=np.int64)
    offsets[order] = np.concatenate([[0], np.cumsum(sizes[order])[:-1]])
    x = torch.cat([members[k].x for k in order])
    y = torch.cat([members[k].y.long() for k in order])
    batch_rows = _batch_rows(members, order, s, offsets, steps)
    counts = (batch_rows >= 0).sum(axis=2)  # b_k,t
    index = torch.from_numpy(np.maximum(batch_rows, 0))
    active = [int((steps > t).sum()) for t in range(int(steps.max()))]
    short = [_short_batches(counts[:m, t], s.batch_size) for t, m in enumerate(active)]

    k_all, specs = len(members), layout.specs
    starts = [start[sp.offset:sp.stop].view(sp.shape) for sp in specs]
    stacked = [w.expand(k_all, *w.shape).clone() for w in starts]  # Θ, one tensor each
    opt = _RowOptimizer(stacked, s)
    totals = np.zeros(k_all, dtype=np.float64)

    def loss(params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor
             ) -> torch.Tensor:  # the loop's own batch-mean loss
        return F.cross_entropy(functional_call(module, params, (xb,)), yb)

    step_fn = vmap(grad_and_value(loss))
    module.train()
    for t, m in enumerate(active):
        rows_t = index[:m, t]
        params = [w[:m] for w in stacked]
        grads, value = step_fn(dict(zip(names := [sp.name for sp in specs], params,
                                        strict=True)), x[rows_t], y[rows_t])
        g = [grads[n] for n in names]
        for b, rows in short[t]:  # short batches, exactly: b records, no padding
            batch = rows_t.index_select(0, rows)[:, :b]
            if len(rows) < SHORT_VMAP:  # a vmapped call costs more than a few plain ones
                for r, k in enumerate(rows.tolist()):
                    leaves = [w[k].detach().requires_grad_() for w in params]
                    one = loss(dict(zip(names, leaves, strict=True)), x[batch[r]], y[batch[r]])
                    for gi, gk in zip(g, torch.autograd.grad(one, leaves), strict=True):
                        gi[k] = gk
                    value[k] = one.detach()
                continue
            sub = {n: w.index_select(0, rows) for n, w in zip(names, params, strict=True)}
            sub_grads, sub_value = step_fn(sub, x[batch], y[batch])
            for gi, n in zip(g, names, strict=True):
                gi.index_copy_(0, rows, sub_grads[n])
            value.index_copy_(0, rows, sub_value)
        if s.proximal_mu > 0:  # FedProx: ∇ + μ (θ − θ_start)
            for gi, w, w0 in zip(g, params, starts, strict=True):
                gi.add_(w - w0, alpha=s.proximal_mu)
        opt.step(params, g, t)
        totals[:m] += value.detach().numpy().astype(np.float64) * counts[:m, t]
    seen = (sizes[order] * s.epochs).astype(np.float64)
    out = torch.empty(k_all, layout.total_size, dtype=torch.float32)
    out[torch.from_numpy(order)] = torch.cat([w.reshape(k_all, -1) for w in stacked], dim=1)
    losses = np.empty(k_all, dtype=np.float64)
    losses[order] = totals / np.maximum(seen, 1)
    return out, losses


def train_cohort(module: nn.Module, layout: ParamLayout, start: np.ndarray,
                 members: Sequence[Member], settings: TrainSettings, *,
                 max_bytes: int = DEFAULT_CHUNK_BYTES) -> CohortResult:
    """Train every member from ``start`` as :func:`~tsfl.training.loop.train_epochs`
    would, alone, with ``default_rng(member.seed)``; chunks of at most ``max_bytes`` of
    working memory at a time. ``module`` is only called functionally (its own parameters
    are left alone); check it with :func:`unbatchable` first."""
    if not members:
        return CohortResult(np.zeros((0, layout.total_size), np.float32), np.zeros(0))
    first = members[0].x
    record_bytes = int(first[0].numel()) * first.element_size() if len(first) else 0
    base = torch.from_numpy(np.ascontiguousarray(start, dtype=np.float32))
    vectors = np.empty((len(members), layout.total_size), dtype=np.float32)
    losses = np.empty(len(members), dtype=np.float64)
    sizes = [len(m.y) for m in members]
    for chunk in plan_chunks(sizes, record_bytes, layout.total_size, settings, max_bytes):
        out, chunk_losses = _train_chunk(module, layout, base, [members[k] for k in chunk],
                                         settings)
        rows = slice(chunk[0], chunk[-1] + 1)  # a chunk is consecutive members
        vectors[rows] = out.numpy()
        losses[rows] = chunk_losses
    return CohortResult(vectors, losses)
