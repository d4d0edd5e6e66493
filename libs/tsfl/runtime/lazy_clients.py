"""Simulated clients of a seeded population, made when first asked for.

A client object holds the device's own state across rounds (its privacy ledger, its
CSPRNG), so once made it is kept; its records are not: they live in a bounded
:class:`~tsfl.sim.population.RecordCache` and are regenerated, identical, after an
eviction. Memory is the clients that ever took part (small objects) plus the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import numpy as np
import torch

from tsfl.sdk.client import TorchClient
from tsfl.sdk.dp_sgd import DpSgdSettings
from tsfl.sdk.privacy_guard import DevicePrivacy
from tsfl.sim.population import RecordCache, Records, SyntheticPopulation
from tsfl.training.flat import FlatModule
from tsfl.training.loop import TrainSettings

Transform = Callable[[int, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class PopulationRecords:
    """Client k's training records as tensors, through a bounded cache; ``transform``
    (a data-poisoning attack) applies to what is generated, before it is cached."""

    def __init__(self, population: SyntheticPopulation, cache: RecordCache | None = None,
                 transform: Transform | None = None):
        self.population = population
        self.cache = cache or RecordCache()
        self.transform = transform

    def get(self, k: int) -> Records:
        return self.cache.get(k, lambda: self._make(k))

    def size(self, k: int) -> int:
        """Client k's record count, without generating its records (a transform keeps
        the count: data poisoning rewrites records, it adds or drops none)."""
        cached = self.cache.peek(k)
        return len(cached[1]) if cached is not None else self.population.num_examples(k)

    def _make(self, k: int) -> Records:
        x, y = self.population.train(k)
        if self.transform is not None:
            x, y = self.transform(k, x, y)
        return (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))


class PopulationClient(TorchClient):
    """A :class:`TorchClient` whose ``x``, ``y`` are its population's records, generated
    when first read (making the client generates nothing)."""

    def __init__(self, records: PopulationRecords, index: int, model: FlatModule,
                 settings: TrainSettings | None = None, dp_sgd: DpSgdSettings | None = None,
                 privacy: DevicePrivacy | None = None):
        self.records, self.index = records, index
        super().__init__(model, None, None, settings, dp_sgd, privacy)  # type: ignore[arg-type]

    def _set_records(self, x: Any, y: Any) -> None:
        """Nothing to set: the records are the population's."""

    @property
    def x(self) -> torch.Tensor:  # type: ignore[override]
        return self.records.get(self.index)[0]

    @property
    def y(self) -> torch.Tensor:  # type: ignore[override]
        return self.records.get(self.index)[1]

    @property
    def num_examples(self) -> int:
        """The client's record count, without generating its records."""
        return self.records.size(self.index)


class LazyClients(MutableMapping[str, Any]):
    """``client id → client`` over a population: ``make(index)`` builds a client the first
    time its id is looked up; clients set explicitly (canaries) are kept as given."""

    def __init__(self, ids: list[str], make: Callable[[int], Any]):
        self._ids = ids
        self._make = make
        self._made: dict[str, Any] = {}

    def _index(self, cid: str) -> int | None:
        head, _, digits = cid.rpartition("-")  # ids are client_name(index)
        if head != "client" or not digits.isdigit():
            return None
        index = int(digits)
        return index if index < len(self._ids) and self._ids[index] == cid else None

    def __getitem__(self, cid: str) -> Any:
        client = self._made.get(cid)
        if client is None:
            index = self._index(cid)
            if index is None:
                raise KeyError(cid)
            client = self._made[cid] = self._make(index)
        return client

    def __setitem__(self, cid: str, client: Any) -> None:
        self._made[cid] = client

    def __delitem__(self, cid: str) -> None:
        del self._made[cid]

    def __contains__(self, cid: object) -> bool:
        return isinstance(cid, str) and (cid in self._made or self._index(cid) is not None)

    def __iter__(self) -> Iterator[str]:
        yield from self._ids
        yield from (c for c in self._made if self._index(c) is None)

    def __len__(self) -> int:
        return len(self._ids) + sum(1 for c in self._made if self._index(c) is None)

    @property
    def made(self) -> int:
        """How many client objects exist (the rest of the population is only ids)."""
        return len(self._made)
