"""ParamLayout: the map between named tensors and one contiguous float32 vector.

Every server-side algorithm (clipping, robust aggregation, compression, secure
aggregation, HE packing) works on the flat vector; only the SDK and the training
loop see named tensors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np

from tsfl.errors import TsflError

VECTOR_DTYPE = np.dtype(np.float32)


class LayoutError(TsflError, ValueError):
    """A tensor set does not match the layout (names, shapes or sizes)."""


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One named tensor inside the flat vector."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int

    @property
    def size(self) -> int:
        return int(prod(self.shape))

    @property
    def stop(self) -> int:
        return self.offset + self.size


class ParamLayout:
    """Ordered names, shapes, dtypes and offsets of a model's tensors.

    The vector form is always float32 and contiguous; tensors of other numeric
    dtypes are cast on the way in and cast back on the way out (integers are
    exact up to 2**24).
    """

    __slots__ = ("_by_name", "_digest", "specs", "total_size")

    def __init__(self, entries: Iterable[tuple[str, Sequence[int], str]]):
        specs: list[ParamSpec] = []
        offset = 0
        seen: set[str] = set()
        for name, shape, dtype in entries:
            if name in seen:
                raise LayoutError(f"duplicate tensor name {name!r}")
            shape_t = tuple(int(d) for d in shape)
            if any(d < 0 for d in shape_t):
                raise LayoutError(f"negative dimension in {name!r}: {shape_t}")
            np.dtype(dtype)  # raises TypeError on nonsense dtypes
            seen.add(name)
            spec = ParamSpec(name=name, shape=shape_t, dtype=str(np.dtype(dtype)), offset=offset)
            specs.append(spec)
            offset = spec.stop
        self.specs: tuple[ParamSpec, ...] = tuple(specs)
        self.total_size: int = offset
        self._by_name = {s.name: s for s in self.specs}
        self._digest: str | None = None

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, named: Mapping[str, Any]) -> ParamLayout:
        """Layout of a mapping of name -> array-like (numpy arrays or torch tensors)."""
        entries = []
        for name, value in named.items():
            arr_dtype = _dtype_name(value)
            entries.append((name, tuple(value.shape), arr_dtype))
        return cls(entries)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any]) -> ParamLayout:
        """Layout of a torch ``state_dict`` (parameters and buffers, in order)."""
        return cls.from_arrays(state_dict)

    @classmethod
    def from_list(cls, arrays: Sequence[np.ndarray], prefix: str = "p") -> ParamLayout:
        """Layout of an unnamed list of numpy arrays (names ``p0``, ``p1``, ...)."""
        return cls.from_arrays({f"{prefix}{i}": a for i, a in enumerate(arrays)})

    # -- description --------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, name: str) -> ParamSpec:
        return self._by_name[name]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParamLayout) and self.specs == other.specs

    def __hash__(self) -> int:
        return hash(self.specs)

    def __repr__(self) -> str:
        return f"ParamLayout({len(self.specs)} tensors, {self.total_size} values)"

    def to_json(self) -> list[dict[str, Any]]:
        return [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in self.specs]

    @classmethod
    def from_json(cls, data: Sequence[Mapping[str, Any]]) -> ParamLayout:
        try:
            return cls((str(d["name"]), tuple(d["shape"]), str(d["dtype"])) for d in data)
        except (KeyError, TypeError) as exc:
            raise LayoutError(f"malformed layout description: {exc}") from exc

    def differences(self, other: ParamLayout, here: str = "here",
                    there: str = "there") -> list[str]:
        """How ``other`` differs from this layout, tensor by tensor (empty: the same),
        e.g. ``"fc.weight: shape (64, 10) in the job, (32, 10) in this model"`` — for a
        device whose model does not match its job's."""
        out = []
        mine, theirs = self._by_name, other._by_name
        for name in mine.keys() - theirs.keys():
            out.append(f"{name}: in {here}, missing from {there}")
        for name in theirs.keys() - mine.keys():
            out.append(f"{name}: in {there}, not in {here}")
        for name in mine.keys() & theirs.keys():
            a, b = mine[name], theirs[name]
            if a.shape != b.shape:
                out.append(f"{name}: shape {a.shape} in {here}, {b.shape} in {there}")
            if a.dtype != b.dtype:
                out.append(f"{name}: dtype {a.dtype} in {here}, {b.dtype} in {there}")
        if not out and self.specs != other.specs:
            out.append(f"the same tensors in another order: {[p.name for p in self.specs]} "
                       f"in {here}, {[p.name for p in other.specs]} in {there}")
        return sorted(out)

    @property
    def digest(self) -> str:
        """A stable fingerprint, used to check that both sides speak of the same model."""
        if self._digest is None:
            blob = json.dumps(self.to_json(), separators=(",", ":")).encode()
            self._digest = hashlib.sha256(blob).hexdigest()[:16]
        return self._digest

    # -- numpy round trips ---------------------------------------------------------------
    def empty(self) -> np.ndarray:
        return np.zeros(self.total_size, dtype=VECTOR_DTYPE)

    def flatten(self, named: Mapping[str, Any], out: np.ndarray | None = None) -> np.ndarray:
        """Named arrays (numpy or torch) -> one contiguous float32 vector."""
        missing = [n for n in self._by_name if n not in named]
        extra = [n for n in named if n not in self._by_name]
        if missing or extra:
            raise LayoutError(f"tensor names differ from layout: missing={missing} extra={extra}")
        vec = self.empty() if out is None else self._check_vector(out)
        for spec in self.specs:
            arr = _to_numpy(named[spec.name])
            if tuple(arr.shape) != spec.shape:
                raise LayoutError(f"{spec.name}: shape {tuple(arr.shape)} != layout {spec.shape}")
            vec[spec.offset : spec.stop] = arr.reshape(-1)
        return vec

    def flatten_list(self, arrays: Sequence[Any]) -> np.ndarray:
        """An ordered list of arrays (Flower-style ``NDArrays``) -> vector."""
        if len(arrays) != len(self.specs):
            raise LayoutError(f"expected {len(self.specs)} arrays, got {len(arrays)}")
        return self.flatten(dict(zip(self.names, arrays, strict=True)))

    def unflatten(self, vec: np.ndarray, *, copy: bool = True) -> dict[str, np.ndarray]:
        """Vector -> named numpy arrays in their original dtypes.

        With ``copy=False`` float32 tensors are zero-copy views into ``vec``.
        """
        vec = self._check_vector(vec)
        out: dict[str, np.ndarray] = {}
        for spec in self.specs:
            view = vec[spec.offset : spec.stop].reshape(spec.shape)
            if spec.dtype != VECTOR_DTYPE.name or copy:
                view = view.astype(spec.dtype, copy=True)
            out[spec.name] = view
        return out

    def unflatten_list(self, vec: np.ndarray, *, copy: bool = True) -> list[np.ndarray]:
        return list(self.unflatten(vec, copy=copy).values())

    # -- torch round trips ---------------------------------------------------------------
    def to_state_dict(self, vec: np.ndarray) -> dict[str, Any]:
        """Vector -> a torch state dict (tensors in their original dtypes)."""
        import torch

        return {name: torch.from_numpy(arr) for name, arr in self.unflatten(vec).items()}

    def _check_vector(self, vec: np.ndarray) -> np.ndarray:
        if not isinstance(vec, np.ndarray) or vec.dtype != VECTOR_DTYPE or vec.ndim != 1:
            raise LayoutError("expected a 1-D float32 numpy vector")
        if vec.shape[0] != self.total_size:
            raise LayoutError(f"vector has {vec.shape[0]} values, layout has {self.total_size}")
        return vec


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    detach = getattr(value, "detach", None)
    if detach is not None:  # torch.Tensor
        return detach().cpu().numpy()
    return np.asarray(value)


def _dtype_name(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return str(value.dtype)
    dtype = getattr(value, "dtype", None)
    if dtype is not None and not isinstance(dtype, np.dtype):  # torch dtype, e.g. torch.float32
        return str(dtype).removeprefix("torch.")
    return str(np.asarray(value).dtype)
