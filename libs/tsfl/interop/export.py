"""Writing a released model as a standard file — safetensors, ONNX or TorchScript — with
its model card (:mod:`tsfl.interop.model_card`).

The model is rebuilt from the job's spec (the same builder, so the same module) and its
tensors checked against the stored layout before the stored vector is loaded into it;
a job whose model cannot be rebuilt here (an import-path model from another machine, a
dataset file not present) is refused with the reason.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tsfl.config import JobSpec
from tsfl.core.layout import ParamLayout
from tsfl.interop.checkpoints import write_safetensors
from tsfl.interop.model_card import ExportError, Released, card_markdown, model_card
from tsfl.sim.models import ModelError, build_model
from tsfl.storage.store import Store
from tsfl.training.flat import FlatModule

FORMATS = {"safetensors": "model.safetensors", "onnx": "model.onnx",
           "torchscript": "model.torchscript.pt"}
#: shapes of the built-in datasets (input, classes), known without loading them
BUILTIN_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((1, 8, 8), 10), "breast_cancer": ((30,), 2)}
ONNX_OPSET = 17


def data_shape(spec: JobSpec) -> tuple[tuple[int, ...], int]:
    """(input shape, classes) of the job's dataset; npz/csv read from the spec's path."""
    d = spec.data
    if d.dataset in BUILTIN_SHAPES:
        return BUILTIN_SHAPES[d.dataset]
    if d.dataset == "synthetic":
        return (d.synthetic.dim,), d.synthetic.classes
    from tsfl.sim.datasets import DatasetError, load_dataset

    try:
        data = load_dataset(d, spec.clients.count)
    except (DatasetError, OSError, ValueError) as exc:
        raise ExportError(f"data.path {d.path!r}: the model's input shape comes from the "
                          f"job's dataset, which cannot be read here ({exc})") from None
    return data.input_shape, data.num_classes


def rebuild(spec: JobSpec, layout: ParamLayout, vector: np.ndarray, *,
            allow_import: bool) -> tuple[nn.Module, tuple[int, ...], int]:
    """The job's module holding ``vector`` (eval mode), its input shape and classes."""
    shape, classes = data_shape(spec)
    try:
        module = build_model(spec.model, shape, classes, spec.seed, allow_import=allow_import)
    except ModelError as exc:
        raise ExportError(f"model: {exc}") from None
    built = FlatModule(module).layout
    if built != layout:
        problems = built.differences(layout, "rebuilt", "stored")
        raise ExportError(f"the rebuilt model is not the stored layout: {problems[:3]}")
    module = build_model(spec.model, shape, classes, spec.seed, allow_import=allow_import)
    state = {k: torch.from_numpy(np.array(v)) for k, v in layout.unflatten(vector).items()}
    module.load_state_dict(state, strict=False)
    return module.eval(), shape, classes


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_model(fmt: str, module: nn.Module, layout: ParamLayout, vector: np.ndarray,
                input_dim: int, path: Path, metadata: dict[str, str]) -> None:
    """``module`` (holding ``vector``) as one file at ``path`` in format ``fmt``; the
    ONNX and TorchScript models take float32 ``[batch, input_dim]`` and return logits."""
    example = torch.zeros(2, input_dim)
    if fmt == "safetensors":
        write_safetensors(path, layout, vector, metadata)
    elif fmt == "onnx":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), input_names=["input"],
                              output_names=["logits"], opset_version=ONNX_OPSET,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              dynamo=False)
        import onnx

        model = onnx.load(str(path))
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(path))
    elif fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, example)
        torch.jit.save(traced, str(path), _extra_files={"model_card.json": json.dumps(
            metadata)})
    else:
        raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


async def export_release(store: Store, rel: Released, fmt: str, out_dir: Path, *,
                         allow_import: bool = False) -> dict[str, Any]:
    """Write ``rel`` as ``fmt`` into ``out_dir`` with model_card.json and model_card.md;
    returns the card."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    module, shape, classes = rebuild(rel.spec, rel.layout, rel.vector,
                                     allow_import=allow_import)
    input_dim = int(np.prod(shape))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FORMATS[fmt]
    from tsfl.pipeline.registry import vector_sha256

    meta = {"tsfl.job": rel.job_id, "tsfl.version": str(rel.version),
            "tsfl.spec_sha256": str(rel.job["spec_sha256"]),
            "tsfl.sha256": vector_sha256(rel.vector)}
    write_model(fmt, module, rel.layout, rel.vector, input_dim, path, meta)
    io = {"input": {"name": "input", "shape": ["batch", input_dim], "dtype": "float32",
                    "data_shape": list(shape)},
          "output": {"name": "logits", "shape": ["batch", classes], "classes": classes}}
    card = await model_card(store, rel, {path.name: _sha256(path)}, fmt, io)
    (out_dir / "model_card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    (out_dir / "model_card.md").write_text(card_markdown(card))
    return card
