"""Builds a simulated federation from a job spec: data, partition, model, clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tsfl.config import JobSpec
from tsfl.core.layout import ParamLayout
from tsfl.robust.attacks import (
    DATA_ATTACKS,
    UPDATE_ATTACKS,
    UpdateAttack,
    malicious_clients,
    poison_data,
)
from tsfl.sdk.client import TorchClient
from tsfl.sdk.dp_sgd import DpSgdSettings
from tsfl.sdk.privacy_guard import DevicePrivacy
from tsfl.sim import partition as parts
from tsfl.sim.datasets import FederatedData, load_dataset
from tsfl.sim.models import build_model
from tsfl.training.flat import FlatModule
from tsfl.training.loop import TrainSettings


@dataclass
class Federation:
    data: FederatedData
    partitions: list[np.ndarray]
    client_ids: list[str]
    clients: dict[str, TorchClient]
    workspace: FlatModule  # shared by the simulated clients (they train one at a time)
    evaluator: FlatModule  # holds the global model for central evaluation
    initial: np.ndarray
    x_test: torch.Tensor
    y_test: torch.Tensor
    malicious: frozenset[str] = frozenset()  # simulated attackers (spec.attacks)
    attack_target: int = 0  # the backdoor's target label
    record_epsilon: float | None = None  # the largest DP-SGD ε any device's ledger holds


class MaliciousClient:
    """An attacker: trains honestly, then uploads what its update attack makes of it."""

    def __init__(self, inner: TorchClient, attack: UpdateAttack):
        self.inner = inner
        self.attack = attack

    @property
    def layout(self) -> ParamLayout:
        return self.inner.layout

    def __getattr__(self, name: str) -> Any:  # privacy, dp_sgd, record_epsilon, ...
        return getattr(self.inner, name)

    def fit_vector(self, vector: np.ndarray, config: dict[str, Any]
                   ) -> tuple[np.ndarray, int, dict[str, float]]:
        start = vector.copy()
        new, n, metrics = self.inner.fit_vector(vector, config)
        delta = np.subtract(new, start, dtype=np.float32)
        return start + self.attack(delta, int(config.get("round", 0))), n, metrics

    def evaluate(self, parameters: Any, config: dict[str, Any]) -> Any:
        return self.inner.evaluate(parameters, config)


def client_name(index: int) -> str:
    return f"client-{index:05d}"


def partition_data(spec: JobSpec, data: FederatedData) -> list[np.ndarray]:
    n_clients = spec.clients.count
    if data.natural_partition is not None:
        return data.natural_partition
    rng = np.random.default_rng([spec.seed, 0xDA7A])
    p = spec.data.partition
    if p.kind == "iid":
        return parts.iid(data.y_train, n_clients, rng)
    if p.kind == "shards":
        return parts.shards(data.y_train, n_clients, p.shards_per_client, rng)
    return parts.dirichlet(data.y_train, n_clients, p.alpha, rng, p.min_examples)


def device_privacy(spec: JobSpec, index: int) -> DevicePrivacy:
    """A simulated device's own privacy state: a CSPRNG, or — only when the spec asks for
    ``noise: seeded`` — a seed of the simulation's (never the server's: devices do not
    use a task's seed for DP), which makes the run reproducible and not private."""
    if not spec.seeded_privacy:
        return DevicePrivacy()
    seed = int(np.random.default_rng([spec.seed, index, 0xDE7]).integers(2**63))
    return DevicePrivacy(simulation_seed=seed)


def build_federation(spec: JobSpec) -> Federation:
    torch.set_num_threads(spec.simulation.torch_threads)
    data = load_dataset(spec.data, spec.clients.count)
    partitions = partition_data(spec, data)
    module = build_model(spec.model, data.input_shape, data.num_classes, spec.seed)
    workspace = FlatModule(module)
    initial = workspace.vector.copy()
    evaluator = FlatModule(build_model(spec.model, data.input_shape, data.num_classes,
                                       spec.seed))
    t = spec.training
    settings = TrainSettings(optimizer=t.optimizer, lr=t.lr, momentum=t.momentum,
                             weight_decay=t.weight_decay, epochs=t.epochs,
                             batch_size=t.batch_size)
    ids = [client_name(i) for i in range(len(partitions))]
    dp_sgd = (DpSgdSettings(t.dp_sgd.noise_multiplier, t.dp_sgd.max_grad_norm, t.dp_sgd.delta)
              if t.dp_sgd is not None else None)
    a = spec.attacks
    malicious = malicious_clients(ids, a.fraction, spec.seed) if a.kind != "none" else set()
    clients: dict[str, Any] = {}
    rng = np.random.default_rng([spec.seed, 0xD0D0])
    image_shape = data.input_shape if len(data.input_shape) >= 2 else None
    for index, (cid, part) in enumerate(zip(ids, partitions, strict=True)):
        xs, ys = data.x_train[part], data.y_train[part]
        if cid in malicious and a.kind in DATA_ATTACKS:
            xs, ys = poison_data(a.kind, xs, ys, data.num_classes, image_shape,
                                 a.target_label, rng)
        clients[cid] = TorchClient(workspace, torch.from_numpy(np.ascontiguousarray(xs)),
                                   torch.from_numpy(np.ascontiguousarray(ys)), settings,
                                   dp_sgd, device_privacy(spec, index))
    if a.kind in UPDATE_ATTACKS:
        attack = UpdateAttack(a, spec.clients.per_round, spec.robust.num_malicious or
                              round(a.fraction * spec.clients.per_round), spec.seed)
        for cid in malicious:
            clients[cid] = MaliciousClient(clients[cid], attack)
    return Federation(data, partitions, ids, clients, workspace, evaluator, initial,
                      torch.from_numpy(data.x_test), torch.from_numpy(data.y_test),
                      frozenset(malicious), a.target_label)


def initial_model(spec: JobSpec) -> tuple[ParamLayout, np.ndarray]:
    """The job's model layout and initial weights, exactly as the embedded run builds them."""
    torch.set_num_threads(spec.simulation.torch_threads)
    data = load_dataset(spec.data, spec.clients.count)
    flat = FlatModule(build_model(spec.model, data.input_shape, data.num_classes, spec.seed))
    return flat.layout, flat.vector.copy()
