"""Which coordinates of the flat vector are encrypted (selective encryption).

Chosen by tensor names, a regular expression over them, and/or a fraction of the most
sensitive coordinates. Sensitivity follows the gradient-inversion literature: the
output layer's gradients reveal the labels (Zhao et al., "iDLG", 2020) and the first
layer's the inputs (Geiping et al., "Inverting Gradients", NeurIPS 2020), so a fraction
is filled from the output layer first, then the first layer, then the others in order.
Every client and the server derive the same indices from the layout and the job spec;
the selection itself is public, only the values are hidden.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from tsfl.core.layout import ParamLayout
from tsfl.he.errors import HeError


def _layers(layout: ParamLayout) -> list[list[int]]:
    """Tensor indices grouped by layer (the name up to its last dot), in layout order."""
    groups: dict[str, list[int]] = {}
    for i, spec in enumerate(layout.specs):
        groups.setdefault(spec.name.rsplit(".", 1)[0], []).append(i)
    return list(groups.values())


def sensitivity_order(layout: ParamLayout) -> list[int]:
    """Tensor indices, most sensitive first: output layer, first layer, then the rest."""
    layers = _layers(layout)
    if len(layers) <= 1:
        return [i for g in layers for i in g]
    order = layers[-1] + layers[0]
    for g in layers[1:-1]:
        order += g
    return order


def select_coordinates(layout: ParamLayout, *, layers: Sequence[str] | None = None,
                       regex: str | None = None, fraction: float | None = None
                       ) -> np.ndarray:
    """The sorted flat indices to encrypt; all of them when nothing is chosen."""
    total = layout.total_size
    if not layers and regex is None and fraction is None:
        return np.arange(total, dtype=np.int64)
    mask = np.zeros(total, dtype=bool)
    names = [s.name for s in layout.specs]
    for name in layers or ():
        if name not in names:
            raise HeError("selection", f"crypto.he.layers names {name!r}, which is not a "
                                       f"tensor of the model ({', '.join(names)})")
        spec = layout.specs[names.index(name)]
        mask[spec.offset:spec.stop] = True
    if regex is not None:
        try:
            pattern = re.compile(regex)
        except re.error as exc:
            raise HeError("selection", f"crypto.he.regex is not a regular expression: "
                                       f"{exc}") from None
        hits = [s for s in layout.specs if pattern.search(s.name)]
        if not hits:
            raise HeError("selection", f"crypto.he.regex {regex!r} matches no tensor "
                                       f"({', '.join(names)})")
        for spec in hits:
            mask[spec.offset:spec.stop] = True
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise HeError("selection", f"crypto.he.fraction must be in (0, 1], got {fraction}")
        want = math.ceil(fraction * total)
        for i in sensitivity_order(layout):
            spec = layout.specs[i]
            room = want - int(mask.sum())
            if room <= 0:
                break
            free = np.flatnonzero(~mask[spec.offset:spec.stop])[:room]
            mask[spec.offset + free] = True
    return np.flatnonzero(mask).astype(np.int64)
