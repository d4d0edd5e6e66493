"""Reading a pretrained checkpoint into a job's flat parameter vector (warm start).

A checkpoint file is untrusted input: its size is bounded before it is opened (by the
model it must fill: at most 8 bytes a parameter, plus headers), a torch file is read
with torch's ``weights_only`` unpickler (tensors and containers, never code), and every
tensor is checked against the job's :class:`~tsfl.core.layout.ParamLayout` — names,
shapes, a floating dtype, finite values — each problem naming the tensor.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsfl.core.layout import ParamLayout
from tsfl.errors import TsflError

#: bytes a checkpoint may hold beyond 8 per parameter (headers, names, pickling)
HEADER_ALLOWANCE = 1 << 20
#: the safetensors header (JSON) is at most this long
MAX_SAFETENSORS_HEADER = 1 << 24
#: wrappers some trainers put around a state dict (Lightning, plain checkpoints)
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
#: the safetensors dtypes a checkpoint may use
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


class CheckpointError(TsflError, ValueError):
    """A checkpoint cannot start this job: unreadable, too large, or not its layout."""


def max_checkpoint_bytes(layout: ParamLayout) -> int:
    """The largest file that can hold ``layout``'s tensors (float64 at worst)."""
    return 8 * layout.total_size + HEADER_ALLOWANCE


def checkpoint_format(path: Path) -> str:
    """``safetensors`` or ``torch`` from the file's first bytes (not its name)."""
    with path.open("rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "torch"  # torch.save's zip container
    if len(head) == 9 and head[8:9] == b"{":
        n = struct.unpack("<Q", head[:8])[0]
        if 0 < n <= MAX_SAFETENSORS_HEADER:
            return "safetensors"
    raise CheckpointError(f"{path.name}: neither a safetensors file nor a torch state dict "
                          "(torch.save zip format)")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    with path.open("rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))  # bounded: checkpoint_format checked n
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: a malformed safetensors header")
    dtypes = {k: str(v.get("dtype", "?")) if isinstance(v, dict) else "?"
              for k, v in header.items() if k != "__metadata__"}
    bad = sorted(k for k, d in dtypes.items() if d not in FLOAT_DTYPES)
    if bad:
        raise CheckpointError(f"tensor {bad[0]!r} is not F16/BF16/F32/F64 "
                              f"({dtypes[bad[0]][:16]})")
    if "BF16" in dtypes.values():
        from safetensors.torch import load_file as load_torch

        return {k: v.float().numpy() for k, v in load_torch(str(path)).items()}
    return load_file(str(path))


def _refuse_compressed(path: Path) -> None:
    """torch.save writes every entry STORED; a compressed entry would be inflated whole
    before anything is checked (a zip bomb), so it is refused first."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            packed = [i.filename for i in archive.infolist()
                      if i.compress_type != zipfile.ZIP_STORED]
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path.name}: not a readable torch file ({exc})") from None
    if packed:
        raise CheckpointError(f"{path.name}: compressed entries ({packed[0][:64]}): "
                              "torch.save never writes those")


def _read_torch(path: Path, layout: ParamLayout) -> dict[str, np.ndarray]:
    _refuse_compressed(path)
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # the safe unpickler refuses anything but tensors/containers
        raise CheckpointError(f"{path.name}: not a loadable torch state dict "
                              f"({type(exc).__name__})") from None
    for key in STATE_DICT_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path.name}: holds a {type(obj).__name__}, not a state dict "
                              "(a mapping of tensor names to tensors)")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"entry {str(name)[:64]!r} is not a named tensor")
        if not torch.is_floating_point(value):
            continue  # integer buffers (num_batches_tracked) are not part of a layout
        # checked before anything is converted: a tensor of 2^33 elements viewing one
        # stored value is 1.5 KB on disk and 32 GiB as float32
        if name not in layout.names:
            hint = (" (the file's names carry a 'module.' prefix: save model.module's "
                    "state)" if name.removeprefix("module.") in layout.names else "")
            raise CheckpointError(f"tensor {name[:64]!r} in the checkpoint is not in the "
                                  f"model{hint}")
        if tuple(value.shape) != layout[name].shape:
            raise CheckpointError(f"tensor {name!r} has shape {tuple(value.shape)} in the "
                                  f"checkpoint, the model's is {layout[name].shape}")
        if (not value.is_contiguous() or value.untyped_storage().nbytes()
                != value.numel() * value.element_size()):
            raise CheckpointError(f"tensor {name!r} is a view of other storage, not a "
                                  "saved tensor")
        out[name] = value.detach().float().numpy()
    return out


def read_checkpoint(path: str | Path, layout: ParamLayout,
                    max_bytes: int | None = None) -> np.ndarray:
    """The float32 vector of the checkpoint at ``path`` in ``layout``'s order; raises
    :class:`CheckpointError` naming the first problem (size, format, a missing,
    unexpected, misshapen or non-finite tensor)."""
    path = Path(path)
    bound = max_checkpoint_bytes(layout)
    if max_bytes is not None:
        bound = min(bound, max_bytes)
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise CheckpointError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise CheckpointError(f"{path.name} is not a regular file")
    if size > bound:
        raise CheckpointError(f"{path.name} is {size:,} bytes, more than a checkpoint of "
                              f"this model's {layout.total_size:,} parameters can take "
                              f"({bound:,})")
    fmt = checkpoint_format(path)
    try:
        tensors = (_read_safetensors(path) if fmt == "safetensors"
                   else _read_torch(path, layout))
    except CheckpointError:
        raise
    except Exception as exc:  # a reader's own failure on hostile bytes: one clean refusal
        raise CheckpointError(f"{path.name}: unreadable {fmt} file "
                              f"({type(exc).__name__})") from None
    return tensors_to_vector(tensors, layout)


def tensors_to_vector(tensors: Mapping[str, np.ndarray], layout: ParamLayout) -> np.ndarray:
    """Named tensors checked against ``layout`` and flattened into its vector."""
    missing = [n for n in layout.names if n not in tensors]
    if missing:
        hint = ""
        stripped = {k.removeprefix("module."): k for k in tensors}
        if missing[0] in stripped:
            hint = " (the file's names carry a 'module.' prefix: save model.module's state)"
        raise CheckpointError(f"tensor {missing[0]!r} is missing from the checkpoint"
                              f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}"
                              f"{hint}; the model's tensors: {', '.join(layout.names[:8])}"
                              f"{', ...' if len(layout) > 8 else ''}")
    extra = sorted(set(tensors) - set(layout.names))
    if extra:
        raise CheckpointError(f"tensor {extra[0]!r} in the checkpoint is not in the model "
                              f"({len(extra)} unexpected)")
    vec = layout.empty()
    for spec in layout.specs:
        arr = np.asarray(tensors[spec.name])
        if tuple(arr.shape) != spec.shape:
            raise CheckpointError(f"tensor {spec.name!r} has shape {tuple(arr.shape)} in the "
                                  f"checkpoint, the model's is {spec.shape}")
        with np.errstate(over="ignore"):  # 1e300 in float64 is inf here: refused below
            values = arr.reshape(-1).astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise CheckpointError(f"tensor {spec.name!r} holds non-finite values "
                                  "(as float32)")
        vec[spec.offset:spec.stop] = values
    return vec


def write_safetensors(path: str | Path, layout: ParamLayout, vector: np.ndarray,
                      metadata: dict[str, str] | None = None) -> None:
    """``vector`` as named float32 tensors in a safetensors file (loads with
    ``safetensors.torch.load_file`` into ``model.load_state_dict``)."""
    from safetensors.numpy import save_file

    named = {k: np.ascontiguousarray(v, dtype=np.float32)
             for k, v in layout.unflatten(vector).items()}
    save_file(named, str(path), metadata=metadata)


def warm_start(path: str | Path, layout: ParamLayout, max_bytes: int | None = None
               ) -> np.ndarray:
    """A job's initial vector from ``model.init``; :class:`~tsfl.config.ConfigError`
    naming the field and the tensor otherwise."""
    from tsfl.config import ConfigError

    try:
        return read_checkpoint(path, layout, max_bytes)
    except CheckpointError as exc:
        raise ConfigError([f"model.init: {exc}"]) from None
