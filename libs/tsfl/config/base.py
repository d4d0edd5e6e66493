"""The base of every spec section, and the bounds a spec is checked against (a spec is
untrusted input)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from tsfl.spec_yaml import MAX_SPEC_BYTES

#: bounds checked before anything is built or stored (a spec is untrusted input)
MAX_CLIENTS = 1_000_000
MAX_ROUNDS = 1_000_000
MAX_SPEC_FILE_BYTES = MAX_SPEC_BYTES

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
