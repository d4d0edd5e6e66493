"""The job's model, built on a device from the layout the coordinator sends at
registration: a device developer does not re-declare the architecture of a built-in model
kind (``mlp``, ``logreg``, ``cnn``). The weights do not matter — each round loads the
global model — but the layout must match exactly, and is checked.

A custom model (``model.builder``) is not recognisable from its layout: the device builds
it with the same installed builder, and :func:`job_model` says so.
"""

from __future__ import annotations

import math
import re

from torch import nn

from tsfl.core.layout import ParamLayout
from tsfl.errors import TsflError
from tsfl.sim.models import mlp, small_cnn
from tsfl.training.flat import FlatModule

_INDEXED = re.compile(r"^(\d+)\.(weight|bias)$")


class UnknownModel(TsflError):
    """The layout is not one of the built-in model kinds'."""


def job_model(layout: ParamLayout) -> nn.Module:
    """An ``nn.Module`` whose parameters have exactly ``layout`` (a built-in kind's);
    :class:`UnknownModel` otherwise."""
    entries = [(s.name, s.shape) for s in layout.specs]
    names = [_INDEXED.match(n) for n, _ in entries]
    if not entries or not all(names) or len(entries) % 2:
        raise UnknownModel(_custom(layout))
    weights = [shape for (_, shape), m in zip(entries, names, strict=True)
               if m is not None and m.group(2) == "weight"]
    if all(len(w) == 2 for w in weights):  # mlp / logreg: Linear layers in a row
        dims = [weights[0][1]] + [w[0] for w in weights]
        model = mlp(dims[0], dims[-1], dims[1:-1])
    elif len(weights) == 3 and [len(w) for w in weights] == [4, 4, 2]:  # small_cnn
        channels, side = weights[0][1], math.isqrt(weights[2][1] // 32) * 4
        model = small_cnn((channels, side, side), weights[2][0])
    else:
        raise UnknownModel(_custom(layout))
    if FlatModule(model).layout != layout:
        raise UnknownModel(_custom(layout))
    return model


def _custom(layout: ParamLayout) -> str:
    first = ", ".join(layout.names[:3])
    return (f"the job's model ({first}, ...) is not a built-in kind (mlp, logreg, cnn): "
            "build it with the model builder the job names (model.builder; `tsfl models`)")
