"""Simulated vertical data: one table of the job's dataset cut into columns per party.

Every entity gets an id; a share ``vertical.overlap`` of them is held by every party, each
other entity by a random non-empty strict subset of the parties, so the intersection the
PSI must find is exactly the shared entities. Each party's rows are in its own random
order; the label party alone holds y. Rows of the dataset's test split are the entities
the label party holds out for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tsfl.config import JobSpec
from tsfl.sim.datasets import DatasetError, FederatedData, load_dataset


@dataclass(frozen=True)
class PartyTable:
    name: str
    ids: list[str]
    x: np.ndarray  # float32 [rows, own columns] (0 columns: a label party without features)
    y: np.ndarray | None  # the label party only


@dataclass(frozen=True)
class VerticalTables:
    parties: dict[str, PartyTable]
    test_ids: frozenset[str]
    num_classes: int
    shared: int  # the size of the true intersection


def vertical_tables(spec: JobSpec) -> VerticalTables:
    """The parties' tables for ``spec.vertical`` (see the module docstring)."""
    v = spec.vertical
    if v is None:
        raise ValueError("not a vertical job")
    data = load_dataset(spec.data, 1)
    if not isinstance(data, FederatedData):
        raise DatasetError("vertical jobs need a table dataset")
    x = np.concatenate([data.x_train.reshape(len(data.x_train), -1),
                        data.x_test.reshape(len(data.x_test), -1)]).astype(np.float32)
    y = np.concatenate([data.y_train, data.y_test])
    n, d = x.shape
    for p in v.parties:
        bad = [c for c in p.indices if c >= d]
        if bad:
            raise DatasetError(f"vertical.parties {p.name}: columns {bad[:5]} beyond the "
                               f"dataset's {d}")
    rng = np.random.default_rng([spec.seed, 11])
    ids = np.array([f"entity-{i:06d}" for i in range(n)])
    shared = np.zeros(n, bool)
    shared[rng.permutation(n)[:round(v.overlap * n)]] = True
    k = len(v.parties)
    holds = np.ones((n, k), bool)
    for i in np.flatnonzero(~shared):
        row = rng.random(k) < 0.5
        if row.all() or not row.any():
            row = np.zeros(k, bool)
            row[rng.choice(k, rng.integers(1, k), replace=False)] = True
        holds[i] = row
    tables = {}
    for j, p in enumerate(v.parties):
        rows = rng.permutation(np.flatnonzero(holds[:, j]))
        cols = list(p.indices)
        tables[p.name] = PartyTable(
            p.name, ids[rows].tolist(), np.ascontiguousarray(x[rows][:, cols]),
            y[rows] if p.name == v.label_party else None)
    test = frozenset(ids[len(data.x_train):].tolist())
    return VerticalTables(tables, test, data.num_classes, int(shared.sum()))
