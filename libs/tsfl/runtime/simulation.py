"""Builds a simulated federation from a job spec: data, partition, model, clients."""

from __future__ import annotations

from collections.abc import MutableMapping
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
from tsfl.runtime.lazy_clients import LazyClients, PopulationClient, PopulationRecords
from tsfl.sdk.client import TorchClient
from tsfl.sdk.dp_sgd import DpSgdSettings
from tsfl.sdk.privacy_guard import DevicePrivacy
from tsfl.sim import partition as parts
from tsfl.sim.datasets import FederatedData, load_dataset
from tsfl.sim.models import build_model
from tsfl.sim.population import PopulationData
from tsfl.training.flat import FlatModule
from tsfl.training.loop import TrainSettings


@dataclass
class Federation:
    """A simulated federation. With a seeded population (synthetic data) ``clients`` is
    a :class:`~tsfl.runtime.lazy_clients.LazyClients` (made on first use, records
    generated per cohort) and ``partitions`` is empty."""

    data: FederatedData | PopulationData
    partitions: list[np.ndarray]
    client_ids: list[str]
    clients: MutableMapping[str, TorchClient]
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


def partition_data(spec: JobSpec, data: FederatedData | PopulationData) -> list[np.ndarray]:
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
    partitions = [] if isinstance(data, PopulationData) else partition_data(spec, data)
    module = build_model(spec.model, data.input_shape, data.num_classes, spec.seed)
    workspace = FlatModule(module)
    initial = workspace.vector.copy()
    evaluator = FlatModule(build_model(spec.model, data.input_shape, data.num_classes,
                                       spec.seed))
    t = spec.training
    settings = TrainSettings(optimizer=t.optimizer, lr=t.lr, momentum=t.momentum,
                             weight_decay=t.weight_decay, epochs=t.epochs,
                             batch_size=t.batch_size)
    population = data.population if isinstance(data, PopulationData) else None
    count = len(partitions) if population is None else population.num_clients
    ids = [client_name(i) for i in range(count)]
    dp_sgd = (DpSgdSettings(t.dp_sgd.noise_multiplier, t.dp_sgd.max_grad_norm, t.dp_sgd.delta)
              if t.dp_sgd is not None else None)
    a = spec.attacks
    malicious = malicious_clients(ids, a.fraction, spec.seed) if a.kind != "none" else set()
    attack = (UpdateAttack(a, spec.clients.per_round, spec.robust.num_malicious or
                           round(a.fraction * spec.clients.per_round), spec.seed)
              if a.kind in UPDATE_ATTACKS else None)
    image_shape = data.input_shape if len(data.input_shape) >= 2 else None
    if population is not None:  # a seeded population: clients made, records generated, on use
        def poison(index: int, xs: np.ndarray, ys: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
            if ids[index] not in malicious or a.kind not in DATA_ATTACKS:
                return xs, ys
            return poison_data(a.kind, xs, ys, data.num_classes, image_shape,
                               a.target_label, np.random.default_rng([spec.seed, index,
                                                                      0xD0D0]))

        records = PopulationRecords(population, transform=poison)

        def make(index: int) -> Any:
            client = PopulationClient(records, index, workspace, settings, dp_sgd,
                                      device_privacy(spec, index))
            return MaliciousClient(client, attack) if (
                attack is not None and ids[index] in malicious) else client

        return _federation(spec, data, [], ids, LazyClients(ids, make), workspace,
                           evaluator, initial, malicious)
    clients: dict[str, Any] = {}
    rng = np.random.default_rng([spec.seed, 0xD0D0])
    for index, (cid, part) in enumerate(zip(ids, partitions, strict=True)):
        xs, ys = data.x_train[part], data.y_train[part]
        if cid in malicious and a.kind in DATA_ATTACKS:
            xs, ys = poison_data(a.kind, xs, ys, data.num_classes, image_shape,
                                 a.target_label, rng)
        clients[cid] = TorchClient(workspace, torch.from_numpy(np.ascontiguousarray(xs)),
                                   torch.from_numpy(np.ascontiguousarray(ys)), settings,
                                   dp_sgd, device_privacy(spec, index))
    if attack is not None:
        for cid in malicious:
            clients[cid] = MaliciousClient(clients[cid], attack)
    return _federation(spec, data, partitions, ids, clients, workspace, evaluator, initial,
                       malicious)


def _federation(spec: JobSpec, data: FederatedData | PopulationData,
                partitions: list[np.ndarray], ids: list[str], clients: Any,
                workspace: FlatModule, evaluator: FlatModule, initial: np.ndarray,
                malicious: set[str]) -> Federation:
    return Federation(data, partitions, ids, clients, workspace, evaluator, initial,
                      torch.from_numpy(data.x_test), torch.from_numpy(data.y_test),
                      frozenset(malicious), spec.attacks.target_label)


def initial_model(spec: JobSpec) -> tuple[ParamLayout, np.ndarray]:
    """The job's model layout and initial weights, exactly as the embedded run builds them."""
    torch.set_num_threads(spec.simulation.torch_threads)
    data = load_dataset(spec.data, spec.clients.count)
    flat = FlatModule(build_model(spec.model, data.input_shape, data.num_classes, spec.seed))
    return flat.layout, flat.vector.copy()
