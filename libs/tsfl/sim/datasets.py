"""Datasets for simulation: scikit-learn's bundled sets, Synthetic(α, β), user files.

Nothing is downloaded: ``digits`` and ``breast_cancer`` ship inside scikit-learn,
``synthetic`` is generated, ``npz``/``csv`` are the user's own files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tsfl.config import DataSpec, SyntheticSpec


class DatasetError(ValueError):
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
    (MLSys 2020), §5.1: for client k, u_k ~ N(0, α), W_k, b_k ~ N(u_k, 1);
    B_k ~ N(0, β), v_k ~ N(B_k, 1), x ~ N(v_k, Σ) with Σ_jj = j^−1.2;
    y = argmax softmax(W_k x + b_k). ``iid`` uses one shared W, b and v ~ N(0, 1).
    Client sizes follow the paper's log-normal (clipped to [min, max])."""
    rng = np.random.default_rng(seed)
    d, c = spec.dim, spec.classes
    sizes = rng.lognormal(spec.mean_samples, spec.sigma_samples, num_clients).astype(np.int64)
    sizes = np.clip(sizes + spec.min_samples, spec.min_samples, spec.max_samples)
    cov_diag = np.arange(1, d + 1, dtype=np.float64) ** -1.2
    w_shared = rng.normal(0, 1, (d, c))
    b_shared = rng.normal(0, 1, c)
    xs_tr, ys_tr, xs_te, ys_te, parts = [], [], [], [], []
    offset = 0
    for k in range(num_clients):
        if spec.iid:
            w, b, v = w_shared, b_shared, rng.normal(0, 1, d)
        else:
            u = rng.normal(0, np.sqrt(spec.alpha)) if spec.alpha > 0 else 0.0
            bk = rng.normal(0, np.sqrt(spec.beta)) if spec.beta > 0 else 0.0
            w = rng.normal(u, 1, (d, c))
            b = rng.normal(u, 1, c)
            v = rng.normal(bk, 1, d)
        n = int(sizes[k])
        x = rng.normal(v, np.sqrt(cov_diag), (n, d))
        y = np.argmax(x @ w + b, axis=1)
        n_test = max(1, round(n * test_fraction))
        xs_te.append(x[:n_test])
        ys_te.append(y[:n_test])
        xs_tr.append(x[n_test:])
        ys_tr.append(y[n_test:])
        parts.append(np.arange(offset, offset + n - n_test, dtype=np.int64))
        offset += n - n_test
    return FederatedData(
        x_train=np.concatenate(xs_tr).astype(np.float32),
        y_train=np.concatenate(ys_tr).astype(np.int64),
        x_test=np.concatenate(xs_te).astype(np.float32),
        y_test=np.concatenate(ys_te).astype(np.int64),
        num_classes=c,
        input_shape=(d,),
        natural_partition=parts,
    )


def load_dataset(spec: DataSpec, num_clients: int) -> FederatedData:
    """Load or generate the dataset a job names."""
    if spec.dataset == "digits":
        return load_digits(spec)
    if spec.dataset == "breast_cancer":
        return load_breast_cancer(spec)
    if spec.dataset == "npz":
        return load_npz(spec)
    if spec.dataset == "csv":
        return load_csv(spec)
    if spec.dataset == "synthetic":
        return generate_synthetic(spec.synthetic, num_clients, spec.test_fraction, spec.split_seed)
    raise DatasetError(f"unknown dataset {spec.dataset!r}")
