"""Builds a simulated federation from a job spec: data, partition, model, clients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tsfl.config import JobSpec
from tsfl.core.layout import ParamLayout
from tsfl.sdk.client import TorchClient
from tsfl.sdk.dp_sgd import DpSgdSettings
from tsfl.sdk.flat import FlatModule
from tsfl.sdk.training import TrainSettings
from tsfl.sim import partition as parts
from tsfl.sim.datasets import FederatedData, load_dataset
from tsfl.sim.models import build_model


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
    x_train = torch.from_numpy(data.x_train)
    y_train = torch.from_numpy(data.y_train)
    ids = [client_name(i) for i in range(len(partitions))]
    dp_sgd = DpSgdSettings(**t.dp_sgd.model_dump()) if t.dp_sgd is not None else None
    clients = {cid: TorchClient(workspace, x_train[idx], y_train[idx], settings, dp_sgd)
               for cid, idx in zip(ids, (torch.from_numpy(p) for p in partitions), strict=True)}
    return Federation(data, partitions, ids, clients, workspace, evaluator, initial,
                      torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))


def initial_model(spec: JobSpec) -> tuple[ParamLayout, np.ndarray]:
    """The job's model layout and initial weights, exactly as the embedded run builds them."""
    torch.set_num_threads(spec.simulation.torch_threads)
    data = load_dataset(spec.data, spec.clients.count)
    flat = FlatModule(build_model(spec.model, data.input_shape, data.num_classes, spec.seed))
    return flat.layout, flat.vector.copy()
