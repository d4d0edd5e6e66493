"""A whole split-training job on aligned data: epochs of batches through a relay.

Rows are positions in the parties' common order (:func:`tsfl.vertical.align.common_order`)
— the relay sees positions, never ids. Each batch: every remote feature party encodes its
activations (:mod:`.messages`), the relay delivers them, the label party decodes them
against its own schedule, steps, and sends each party its gradient the same way. After
each epoch the label party evaluates on the held-out aligned rows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from tsfl.privacy.noise import noise_source
from tsfl.vertical import messages as m
from tsfl.vertical.protection import CutLayerDP, randomized_response
from tsfl.vertical.split import (
    FeatureParty,
    LabelParty,
    bottom_model,
    cut_width,
    top_model,
)

Relay = Callable[[str, str, str, bytes], bytes]


@dataclass(frozen=True)
class SplitSetup:
    """The training side of a vertical job (see :class:`tsfl.config.vertical.VerticalSpec`)."""

    model: Literal["logreg", "split_nn"] = "logreg"
    cut: int = 8
    bottom_hidden: tuple[int, ...] = (16,)
    top_hidden: tuple[int, ...] = (16,)
    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.1
    optimizer: Literal["sgd", "adam"] = "sgd"
    weight_decay: float = 0.0
    cut_dp: tuple[float, float, float] | None = None  # clip, noise multiplier, delta
    label_dp_epsilon: float | None = None
    noise: Literal["seeded", "secure"] = "secure"
    seed: int = 0


@dataclass(frozen=True)
class PartyColumns:
    """One party's aligned columns; ``local``: the label party's own columns (never sent)."""

    name: str
    x_train: np.ndarray
    x_test: np.ndarray
    local: bool = False


@dataclass
class SplitResult:
    metrics: list[dict[str, Any]]
    parties: dict[str, FeatureParty]
    label: LabelParty
    epsilon: float | None
    gradients: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)


def _pass_through(src: str, dst: str, kind: str, msg: bytes) -> bytes:
    return msg


#: model initialisation seeds torch's global generator: one party at a time per process
_INIT = threading.Lock()
#: the batch number of the per-epoch evaluation activations
EVAL_BATCH = 1 << 31


def noise_for(setup: SplitSetup, stream: int) -> Any:
    """The noise source of one party's protection (``seeded``: reproducible streams)."""
    return noise_source(setup.noise, [setup.seed, stream] if setup.noise == "seeded"
                        else None)


def make_feature(setup: SplitSetup, k: int, cols: PartyColumns,
                 num_classes: int) -> FeatureParty:
    """Party k's bottom model, initialised from its own seed stream (so a party process
    builds the same model as the embedded run)."""
    dp = None
    if setup.cut_dp is not None and not cols.local:
        clip, z, delta = setup.cut_dp
        dp = CutLayerDP(clip, z, delta, noise_for(setup, 100 + k))
    with _INIT, torch.random.fork_rng(devices=[]):
        torch.manual_seed(setup.seed * 1009 + k + 1)
        model = bottom_model(setup.model, cols.x_train.shape[1], num_classes, setup.cut,
                             setup.bottom_hidden)
    return FeatureParty(cols.name, np.ascontiguousarray(cols.x_train, np.float32), model,
                        setup.lr, setup.optimizer, dp, setup.weight_decay,
                        np.ascontiguousarray(cols.x_test, np.float32))


def make_label(setup: SplitSetup, parts: int, y_train: np.ndarray,
               num_classes: int) -> LabelParty:
    """The top model (its own seed stream) and the labels it trains on (ỹ under label DP)."""
    y_used = (randomized_response(y_train, num_classes, setup.label_dp_epsilon,
                                  noise_for(setup, 0))
              if setup.label_dp_epsilon is not None else y_train)
    with _INIT, torch.random.fork_rng(devices=[]):
        torch.manual_seed(setup.seed * 1009)
        model = top_model(setup.model, parts, num_classes, setup.cut, setup.top_hidden)
    return LabelParty(y_used, model, setup.lr, setup.optimizer, setup.weight_decay)


def batches(setup: SplitSetup, n: int, epoch: int) -> list[np.ndarray]:
    """Epoch ``epoch``'s batches: positions in the common order, from the job seed."""
    order = np.random.default_rng([setup.seed, 7, epoch]).permutation(n)
    return [order[i:i + setup.batch_size] for i in range(0, n, setup.batch_size)]


def scores(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of predicted class probabilities."""
    acc = float((probs.argmax(1) == y).mean())
    loss = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
    return acc, loss


def train_split(setup: SplitSetup, parties: Sequence[PartyColumns], y_train: np.ndarray,
                y_test: np.ndarray, num_classes: int, *, session: bytes = bytes(16),
                label_name: str = "label", relay: Relay | None = None,
                on_epoch: Callable[[dict[str, Any]], None] | None = None,
                keep_gradients: bool = False) -> SplitResult:
    """Train; one metrics record per epoch (the horizontal runs' keys, round = epoch).
    ``keep_gradients`` records what each feature party received (for attack tests)."""
    relay = relay or _pass_through
    width = cut_width(setup.model, num_classes, setup.cut)
    feature = {p.name: make_feature(setup, k, p, num_classes) for k, p in enumerate(parties)}
    label = make_label(setup, len(parties), y_train, num_classes)
    index = {p.name: i for i, p in enumerate(parties)}
    metrics: list[dict[str, Any]] = []
    grads: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {p.name: [] for p in parties}
    n = len(y_train)
    t0 = time.perf_counter()
    epsilon = None

    def send(p: PartyColumns, kind: int, epoch: int, batch: int, values: np.ndarray,
             counter: list[int]) -> np.ndarray:
        if p.local:
            return values
        src, dst = ((p.name, label_name) if kind == m.ACTIVATIONS else (label_name, p.name))
        msg = relay(src, dst, "activations" if kind == m.ACTIVATIONS else "gradients",
                    m.encode(kind, session, index[p.name], epoch, batch, values))
        counter[0] += len(msg)
        return m.decode(msg, m.Expect(kind, session, index[p.name], epoch, batch,
                                      values.shape[0], width))

    for epoch in range(1, setup.epochs + 1):
        up, down, losses = [0], [0], []
        for b, rows in enumerate(batches(setup, n, epoch)):
            parts = [send(p, m.ACTIVATIONS, epoch, b,
                          feature[p.name].activations(rows, True), up) for p in parties]
            g, loss = label.step(rows, parts)
            losses.append(loss * len(rows))
            for p, gk in zip(parties, g, strict=True):
                got = send(p, m.GRADIENTS, epoch, b, gk, down)
                if keep_gradients:
                    grads[p.name].append((rows, got))
                feature[p.name].backward(got)
        test_parts = [send(p, m.ACTIVATIONS, epoch, EVAL_BATCH,
                           feature[p.name].test_activations(), up) for p in parties]
        acc, test_loss = scores(label.predict(test_parts), y_test)
        eps = [fp.dp.end_epoch() for fp in feature.values() if fp.dp is not None]
        epsilon = max(eps) if eps else None
        rec = {"round": epoch, "test_accuracy": acc, "test_loss": test_loss,
               "train_loss": float(sum(losses) / n), "clients": len(parties),
               "rejected": 0, "dropped": 0, "bytes_up": up[0], "bytes_down": down[0],
               "model_version": epoch, "wall_s": time.perf_counter() - t0,
               "epsilon": epsilon}
        metrics.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
    return SplitResult(metrics, feature, label, epsilon, grads if keep_gradients else {})
