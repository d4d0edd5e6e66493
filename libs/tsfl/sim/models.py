"""Built-in models (MLP, small CNN, logistic regression), model builders the operator
installs (the ``tsfl.models`` entry-point group: a spec names one, it never names code),
and — for ``tsfl run`` only — user models by import path."""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from tsfl.config import ModelSpec
from tsfl.errors import TsflError


class ModelError(TsflError, ValueError):
    """A model cannot be built from the spec."""


def mlp(input_dim: int, num_classes: int, hidden: list[int]) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = input_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def small_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Two 3×3 conv blocks (16, 32 channels) with 2×2 max-pooling, then a linear head."""
    if len(input_shape) != 3:
        raise ModelError(f"cnn needs (channels, height, width) input, got {input_shape}")
    c, h, w = input_shape
    if h < 4 or w < 4:
        raise ModelError(f"cnn needs images of at least 4x4, got {h}x{w}")
    return nn.Sequential(
        nn.Unflatten(1, (c, h, w)),
        nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (h // 4) * (w // 4), num_classes),
    )


def mlp_layernorm(input_dim: int, num_classes: int, hidden: list[int] | None = None
                  ) -> nn.Module:
    """An MLP with LayerNorm after each hidden layer: normalised like BatchNorm, but per
    record, so DP-SGD can train it (registered as the ``mlp-layernorm`` builder)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = input_dim
    for h in hidden or [64, 64]:
        if not isinstance(h, int) or not 0 < h <= 65_536:
            raise ModelError(f"mlp-layernorm: hidden widths must be integers in 1..65536, "
                             f"got {h!r}")
        layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


#: the entry-point group of installed model builders
BUILDER_GROUP = "tsfl.models"


def model_builders() -> dict[str, Any]:
    """Installed model builders by name (entry points of group ``tsfl.models``)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=BUILDER_GROUP)}


def load_builder(name: str) -> Any:
    """The installed builder ``name``; :class:`ModelError` naming the installed ones."""
    found = model_builders().get(name)
    if found is None:
        names = ", ".join(sorted(model_builders())) or "none"
        raise ModelError(f"no model builder {name!r} is installed (installed: {names}; "
                         "see `tsfl models`)")
    builder = found.load()
    if not callable(builder):
        raise ModelError(f"model builder {name!r} is not callable")
    return builder


def load_factory(path: str) -> Any:
    """Resolve ``'package.module:function'`` to the callable."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ModelError(f"model factory must look like 'package.module:function', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name!r}: {exc}") from None
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise ModelError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(factory):
        raise ModelError(f"{path!r} is not callable")
    return factory


def build_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int,
                seed: int, *, allow_import: bool = True) -> nn.Module:
    """Build the job's model with deterministic initial weights. ``allow_import=False`` (a
    server building a submitted spec) refuses ``model.factory``: a spec names installed
    builders, never code to import."""
    torch.manual_seed(seed)
    input_dim = 1
    for d in input_shape:
        input_dim *= d
    if spec.kind == "mlp":
        return mlp(input_dim, num_classes, list(spec.hidden))
    if spec.kind == "logreg":
        return mlp(input_dim, num_classes, [])
    if spec.kind == "cnn":
        return small_cnn(input_shape, num_classes)
    if spec.builder is not None:
        factory, label = load_builder(spec.builder), f"model builder {spec.builder!r}"
    elif not allow_import:
        raise ModelError("model.factory is an import path, which a server never follows: "
                         "name an installed model builder (model.builder; `tsfl models`)")
    else:
        factory, label = load_factory(spec.factory or ""), f"model factory {spec.factory!r}"
    try:
        model = factory(input_dim=input_dim, num_classes=num_classes, **spec.kwargs)
    except TypeError as exc:
        raise ModelError(f"{label} rejected its arguments: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{label} returned {type(model).__name__}, not a torch.nn.Module")
    return model
