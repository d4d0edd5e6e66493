"""Datasets for simulation: scikit-learn's bundled sets, Synthetic(α, β), user files.

Nothing is downloaded: ``digits`` and ``breast_cancer`` ship inside scikit-learn,
``synthetic`` is generated, ``npz``/``csv`` are the user's own files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tsfl.config import DataSpec, SyntheticSpec
from tsfl.errors import TsflError

if TYPE_CHECKING:
    from tsfl.sim.population import PopulationData


class DatasetError(TsflError, ValueError):
    """A dataset file or setting cannot be used."""


@dataclass(frozen=True)
class FederatedData:
    """A train/test split, plus the natural client split for generated data."""

    x_train: np.ndarray  # float32 [n, d]
    y_train: np.ndarray  # int64 [n]
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    natural_partition: list[np.ndarray] | None = None  # indices into x_train per client

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.input_shape))


def _stratified_split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    return tuple(
        train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    )


def _labels_to_int(y: np.ndarray) -> tuple[np.ndarray, int]:
    classes, encoded = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise DatasetError("the labels have fewer than two classes")
    return encoded.astype(np.int64), len(classes)


def _finish(x: np.ndarray, y: np.ndarray, spec: DataSpec, shape: tuple[int, ...],
            standardize: bool) -> FederatedData:
    if x.ndim != 2 or len(x) != len(y):
        raise DatasetError(f"features must be [n, d] matching labels, got {x.shape} and {y.shape}")
    if not np.all(np.isfinite(x)):
        raise DatasetError("features contain NaN or Inf")
    y_int, num_classes = _labels_to_int(y)
    x_tr, x_te, y_tr, y_te = _stratified_split(x, y_int, spec.test_fraction, spec.split_seed)
    if standardize:
        mean = x_tr.mean(axis=0)
        std = x_tr.std(axis=0)
        std[std == 0] = 1.0
        x_tr = (x_tr - mean) / std
        x_te = (x_te - mean) / std
    return FederatedData(
        x_train=np.ascontiguousarray(x_tr, dtype=np.float32),
        y_train=np.ascontiguousarray(y_tr, dtype=np.int64),
        x_test=np.ascontiguousarray(x_te, dtype=np.float32),
        y_test=np.ascontiguousarray(y_te, dtype=np.int64),
        num_classes=num_classes,
        input_shape=shape,
    )


def load_digits(spec: DataSpec) -> FederatedData:
    from sklearn.datasets import load_digits as sk_digits

    ds = sk_digits()
    # Pixel intensities 0..16 scaled to [0, 1]: images stay images (CNN-friendly).
    return _finish(ds.data / 16.0, ds.target, spec, (1, 8, 8), standardize=False)


def load_breast_cancer(spec: DataSpec) -> FederatedData:
    from sklearn.datasets import load_breast_cancer as sk_bc

    ds = sk_bc()
    return _finish(ds.data, ds.target, spec, (ds.data.shape[1],), standardize=True)


def load_npz(spec: DataSpec) -> FederatedData:
    path = Path(spec.path or "")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            xk = next((k for k in ("x", "X", "features") if k in keys), None)
            yk = next((k for k in ("y", "Y", "labels") if k in keys), None)
            if xk is None or yk is None:
                raise DatasetError(f"{path}: needs arrays 'x' and 'y' (found {len(keys)} "
                                   "others)")
            x, y = npz[xk], npz[yk]
    except (OSError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path}: cannot read it as an npz archive of numeric arrays "
                           f"({type(exc).__name__})") from None
    if not np.issubdtype(x.dtype, np.number):
        raise DatasetError(f"{path}: features must be numeric, got {x.dtype}")
    shape = tuple(x.shape[1:])
    return _finish(x.reshape(len(x), -1).astype(np.float64), y.reshape(-1), spec, shape,
                   standardize=True)


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def load_csv(spec: DataSpec) -> FederatedData:
    import csv

    path = Path(spec.path or "")
    # Errors name rows and columns, never a value: the file's content is not echoed.
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read csv: {exc.strerror or type(exc).__name__}"
                           ) from None
    except (UnicodeDecodeError, csv.Error):
        raise DatasetError(f"{path}: not a UTF-8 csv file") from None
    if len(rows) < 3:
        raise DatasetError(f"{path}: needs a header row and at least two data rows")
    header, body = rows[0], rows[1:]
    label_col = spec.label_column or header[-1]
    if label_col not in header:
        raise DatasetError(f"{path}: label column {label_col!r} is not in its header row "
                           f"({len(header)} columns)")
    li = header.index(label_col)
    try:
        x = np.array([[float(v) for j, v in enumerate(r) if j != li] for r in body], np.float64)
    except ValueError:
        bad = next(i for i, r in enumerate(body, 2)
                   if not all(_is_float(v) for j, v in enumerate(r) if j != li))
        raise DatasetError(f"{path}: row {bad} has a non-numeric feature value") from None
    if any(len(r) != len(header) for r in body):
        raise DatasetError(f"{path}: rows have differing numbers of columns")
    y = np.array([r[li] for r in body])
    return _finish(x, y, spec, (x.shape[1],), standardize=True)


def generate_synthetic(spec: SyntheticSpec, num_clients: int, test_fraction: float,
                       seed: int) -> FederatedData:
    """Synthetic(α, β) of Li et al., "Federated Optimization in Heterogeneous Networks"
    (MLSys 2020), §5.1, materialised whole: every client of the population
    (:class:`~tsfl.sim.population.SyntheticPopulation`, which states the generator; each
    client is drawn from its own seed), its natural split as the partition."""
    from tsfl.sim.population import PopulationData, SyntheticPopulation

    data = PopulationData(SyntheticPopulation(spec, num_clients, test_fraction, seed))
    return FederatedData(x_train=data.x_train, y_train=data.y_train, x_test=data.x_test,
                         y_test=data.y_test, num_classes=data.num_classes,
                         input_shape=data.input_shape,
                         natural_partition=data.natural_partition)


def load_dataset(spec: DataSpec, num_clients: int) -> FederatedData | PopulationData:
    """Load or generate the dataset a job names. Synthetic data is a population
    (:class:`~tsfl.sim.population.PopulationData`): its training records are generated
    per client when needed, never all at once unless ``x_train`` is read."""
    if spec.dataset == "digits":
        return load_digits(spec)
    if spec.dataset == "breast_cancer":
        return load_breast_cancer(spec)
    if spec.dataset == "npz":
        return load_npz(spec)
    if spec.dataset == "csv":
        return load_csv(spec)
    if spec.dataset == "synthetic":
        from tsfl.sim.population import PopulationData, SyntheticPopulation

        return PopulationData(SyntheticPopulation(spec.synthetic, num_clients,
                                                  spec.test_fraction, spec.split_seed))
    raise DatasetError(f"unknown dataset {spec.dataset!r}")
