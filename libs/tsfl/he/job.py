"""One HE job as every party sees it: the key's public part, the encrypted coordinates
(and the clear ones), and the weight unit. Built from the job spec and the model layout,
so the coordinator, the he service, the release stage and each device derive the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tsfl.core.layout import ParamLayout
from tsfl.he.errors import HeError
from tsfl.he.keys import PublicKeySet
from tsfl.he.params import CkksParams, choose_params
from tsfl.he.seal import prime_of
from tsfl.he.selection import select_coordinates

if TYPE_CHECKING:
    from tsfl.config import JobSpec


def he_selection(spec: JobSpec) -> dict[str, Any]:
    h = spec.crypto.he
    return {"layers": h.layers, "regex": h.regex, "fraction": h.fraction}


def he_params(spec: JobSpec, layout: ParamLayout) -> CkksParams:
    """The job's CKKS parameters: from its precision, bound, cohort size and security,
    and the ring that pads its encrypted coordinates least."""
    h = spec.crypto.he
    size = int(select_coordinates(layout, **he_selection(spec)).size)
    return choose_params(h.precision, h.value_bound, spec.clients.per_round,
                         security=h.security, poly_degree=h.poly_degree, size=size)


@dataclass(frozen=True)
class HeJob:
    public: PublicKeySet
    selected: np.ndarray  # flat indices that are encrypted (sorted)
    clear: np.ndarray  # the others, sent in the clear
    weight_unit: float
    selection: dict[str, Any]  # how ``selected`` was chosen (sent to devices)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    @classmethod
    def from_spec(cls, spec: JobSpec, layout: ParamLayout) -> HeJob | None:
        """None unless ``crypto.mode`` is ``he``; a job without a key id is refused."""
        if spec.crypto.mode != "he":
            return None
        h = spec.crypto.he
        if not h.key_id:
            raise HeError("key", "crypto.he.key_id is missing: create a key set with "
                                 "`tsfl keys init` and submit with --he-keys")
        params = he_params(spec, layout)
        return cls.build(PublicKeySet(h.key_id, params, prime_of(params)), layout,
                         h.weight_unit, he_selection(spec))

    @classmethod
    def build(cls, public: PublicKeySet, layout: ParamLayout, weight_unit: float,
              selection: dict[str, Any]) -> HeJob:
        selected = select_coordinates(layout, layers=selection.get("layers"),
                                      regex=selection.get("regex"),
                                      fraction=selection.get("fraction"))
        mask = np.ones(layout.total_size, dtype=bool)
        mask[selected] = False
        return cls(public, selected, np.flatnonzero(mask).astype(np.int64), weight_unit,
                   dict(selection))

    def task_config(self) -> dict[str, Any]:
        """What a device needs, besides its secret key, to take part in a round."""
        return {"key_id": self.key_id, "weight_unit": self.weight_unit, **self.selection}
