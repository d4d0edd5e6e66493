"""Partitioners: how a centralised training set is split across simulated clients."""

from __future__ import annotations

import numpy as np

from tsfl.errors import TsflError


class PartitionError(TsflError, ValueError):
    """The data cannot be split as asked (too few examples for the clients)."""


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniformly random, equal-sized shards."""
    _check(len(labels), num_clients, 1)
    perm = rng.permutation(len(labels))
    return [np.sort(p) for p in np.array_split(perm, num_clients)]


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator,
              min_examples: int = 2, max_tries: int = 1000) -> list[np.ndarray]:
    """Label skew: each class's examples split by proportions p ~ Dir(α·1).

    Hsu et al. 2019 (arXiv 1909.06335) §3; with NIID-Bench's balancing (Li et al.,
    ICDE 2022): a client already holding more than n/K examples gets no more.
    Resampled until every client holds at least ``min_examples``.
    """
    n = len(labels)
    _check(n, num_clients, min_examples)
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_clients, alpha))
            p = p * (sizes < n / num_clients)
            total = p.sum()
            p = p / total if total > 0 else np.full(num_clients, 1.0 / num_clients)
            cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
                sizes[k] += len(chunk)
        if sizes.min() >= min_examples:
            return [np.sort(np.concatenate(p)) for p in parts]
    raise PartitionError(
        f"could not give each of {num_clients} clients {min_examples} examples with "
        f"Dirichlet alpha={alpha} in {max_tries} tries; lower partition.min_examples or clients"
    )


def shards(labels: np.ndarray, num_clients: int, shards_per_client: int,
           rng: np.random.Generator) -> list[np.ndarray]:
    """McMahan et al. 2017 §3 pathological non-IID: sort by label, cut into
    ``num_clients · shards_per_client`` shards, give each client that many at random."""
    n_shards = num_clients * shards_per_client
    _check(len(labels), n_shards, 1)
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, n_shards)
    assignment = rng.permutation(n_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in assignment]


def _check(n: int, parts: int, per_part: int) -> None:
    if n < parts * per_part:
        raise PartitionError(f"{n} examples cannot give {parts} parts {per_part} example(s) each")
