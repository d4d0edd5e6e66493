"""A torch module whose floating tensors live in one contiguous float32 vector.

Loading a global model is then one ``copy_``, and the update is one subtraction:
no per-tensor work on the hot path of simulation or device training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tsfl.core.layout import ParamLayout


class FlatModule:
    """Rebinds a module's floating parameters and buffers as views of ``self.flat``.

    Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) stay local and are
    not part of the layout.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        named = {k: v for k, v in module.state_dict(keep_vars=True).items()
                 if torch.is_floating_point(v)}
        self.layout = ParamLayout((k, tuple(v.shape), "float32") for k, v in named.items())
        self.flat = torch.zeros(self.layout.total_size, dtype=torch.float32)
        self.params: list[nn.Parameter] = []
        param_ids = {id(p) for p in module.parameters()}
        for spec in self.layout.specs:
            tensor = named[spec.name]
            view = self.flat[spec.offset:spec.stop].view(spec.shape)
            view.copy_(tensor.detach())
            if id(tensor) in param_ids:
                tensor.data = view
                self.params.append(tensor)  # type: ignore[arg-type]
            else:
                owner_name, _, buf_name = spec.name.rpartition(".")
                owner = module.get_submodule(owner_name) if owner_name else module
                owner._buffers[buf_name] = view
        self._np = self.flat.numpy()  # shares memory with self.flat

    @property
    def vector(self) -> np.ndarray:
        """The live float32 vector (shares memory with the module)."""
        return self._np

    def load(self, vector: np.ndarray) -> None:
        if vector.shape != self._np.shape:
            raise ValueError(f"model vector has {vector.shape[0]} values, expected "
                             f"{self._np.shape[0]}")
        np.copyto(self._np, vector)
