"""A client population described by seeds: client k's records are a pure function of
(seed, k), generated when the client is first needed, so a population costs memory in
proportion to the cohorts that train, not to its size.

Synthetic(α, β) of Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys
2020), §5.1, drawn per client from ``default_rng([seed, k, 0x5E17])``, in this order:

    n_k = clip(⌊LogNormal(μ_s, σ_s)⌋ + n_min, n_min, n_max)
    u_k ~ N(0, α),  B_k ~ N(0, β)             (IID: W, b shared, from [seed, 0x5A7E])
    W_k ~ N(u_k, 1)^{d×c},  b_k ~ N(u_k, 1)^c,  v_k ~ N(B_k, 1)^d
    x ~ N(v_k, Σ), Σ_jj = j^−1.2;   y = argmax(W_kᵀ x + b_k)

The first ``max(1, round(n_k · test_fraction))`` records of each client are held out.
The central test set is the held-out records of every client when the population has at
most :data:`TEST_CLIENTS`, else of :data:`TEST_CLIENTS` evenly spaced ones (bounded
whatever the population). numpy's streams are sequential, so the held-out rows are drawn
without the training rows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import cached_property

import numpy as np
import torch

from tsfl.config import SyntheticSpec

CLIENT_TAG, SHARED_TAG = 0x5E17, 0x5A7E
#: the most clients whose held-out records make the central test set
TEST_CLIENTS = 5_000
#: default budget of materialised client records kept between cohorts
CACHE_BYTES = 512 << 20


class SyntheticPopulation:
    """Synthetic(α, β) over ``num_clients`` clients, each generated on demand."""

    def __init__(self, spec: SyntheticSpec, num_clients: int, test_fraction: float,
                 seed: int):
        self.spec, self.num_clients = spec, num_clients
        self.test_fraction, self.seed = test_fraction, seed
        self.scale = np.sqrt(np.arange(1, spec.dim + 1, dtype=np.float64) ** -1.2)
        shared = np.random.default_rng([seed, SHARED_TAG])
        self.w_shared = shared.normal(0, 1, (spec.dim, spec.classes))
        self.b_shared = shared.normal(0, 1, spec.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.spec.dim,)

    @property
    def num_classes(self) -> int:
        return self.spec.classes

    def _start(self, k: int) -> tuple[np.random.Generator, int, int]:
        if not 0 <= k < self.num_clients:
            raise IndexError(f"client {k} is not in a population of {self.num_clients}")
        s = self.spec
        rng = np.random.default_rng([self.seed, k, CLIENT_TAG])
        n = int(np.clip(int(rng.lognormal(s.mean_samples, s.sigma_samples)) + s.min_samples,
                        s.min_samples, s.max_samples))
        return rng, n, max(1, round(n * self.test_fraction))

    def num_examples(self, k: int) -> int:
        """Client k's training records (drawn without generating them)."""
        _, n, n_test = self._start(k)
        return n - n_test

    def _client(self, k: int, *, train: bool) -> tuple[np.ndarray, np.ndarray]:
        rng, n, n_test = self._start(k)
        s = self.spec
        if s.iid:
            w, b, v = self.w_shared, self.b_shared, rng.normal(0, 1, s.dim)
        else:
            u = rng.normal(0, np.sqrt(s.alpha)) if s.alpha > 0 else 0.0
            bk = rng.normal(0, np.sqrt(s.beta)) if s.beta > 0 else 0.0
            w = rng.normal(u, 1, (s.dim, s.classes))
            b = rng.normal(u, 1, s.classes)
            v = rng.normal(bk, 1, s.dim)
        x = rng.normal(v, self.scale, (n_test, s.dim))
        if train:
            x = rng.normal(v, self.scale, (n - n_test, s.dim))
        return x.astype(np.float32), np.argmax(x @ w + b, axis=1).astype(np.int64)

    def train(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Client k's training records (float32 [n, d], int64 [n])."""
        return self._client(k, train=True)

    def held_out(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Client k's held-out records."""
        return self._client(k, train=False)

    def test_clients(self) -> np.ndarray:
        """The clients whose held-out records make the central test set."""
        if self.num_clients <= TEST_CLIENTS:
            return np.arange(self.num_clients)
        return np.unique(np.linspace(0, self.num_clients - 1, TEST_CLIENTS).round()
                         ).astype(np.int64)


class PopulationData:
    """:class:`~tsfl.sim.datasets.FederatedData`'s interface over a population: the test
    set is materialised; ``x_train``, ``y_train`` and ``natural_partition`` only when
    read (all of the population at once: what a per-cohort simulation never reads)."""

    def __init__(self, population: SyntheticPopulation):
        self.population = population
        self.num_classes = population.num_classes
        self.input_shape = population.input_shape
        held = [population.held_out(int(k)) for k in population.test_clients()]
        self.x_test = np.concatenate([x for x, _ in held])
        self.y_test = np.concatenate([y for _, y in held])

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.input_shape))

    @cached_property
    def _training(self) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        xs, ys, parts, offset = [], [], [], 0
        for k in range(self.population.num_clients):
            x, y = self.population.train(k)
            xs.append(x)
            ys.append(y)
            parts.append(np.arange(offset, offset + len(y), dtype=np.int64))
            offset += len(y)
        return np.concatenate(xs), np.concatenate(ys), parts

    @property
    def x_train(self) -> np.ndarray:
        return self._training[0]

    @property
    def y_train(self) -> np.ndarray:
        return self._training[1]

    @property
    def natural_partition(self) -> list[np.ndarray]:
        return self._training[2]


Records = tuple[torch.Tensor, torch.Tensor]


class RecordCache:
    """Materialised client records, least recently used evicted past ``max_bytes``
    (a client's records are regenerated, identical, when next needed)."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[int, Records] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def peek(self, key: int) -> Records | None:
        """The cached records of ``key``, if any (not counted as a use)."""
        return self._items.get(key)

    def get(self, key: int, make: Callable[[], Records]) -> Records:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            return item
        item = make()
        self._items[key] = item
        self.bytes += _nbytes(item)
        while self.bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self.bytes -= _nbytes(old)
        return item


def _nbytes(item: Records) -> int:
    return sum(t.numel() * t.element_size() for t in item)
