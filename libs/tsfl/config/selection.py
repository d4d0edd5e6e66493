"""Client selection (``selection``): which registered devices a round asks to train.

``uniform`` (the default) is today's k-of-n draw. The others use what the server knows
of each device — its speed and availability (the virtual clock in simulation, timed
transfers otherwise), its last training loss, its declared label histogram — so they are
refused with any DP mode: DP's amplification by sampling needs a random, secret sample
(see :meth:`tsfl.config.job.JobSpec._check`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from tsfl.config.base import PositiveFloat, Spec
from tsfl.plugins import SELECTION_GROUP, known_name

#: the policies that ship with tsfl
BUILT_IN = ("uniform", "speed", "oort", "stratified")


class SelectionSpec(Spec):
    kind: str = Field("uniform", max_length=64, description=(
        "uniform: k of n at random; speed: online devices, fastest expected first (with "
        "exploration); oort: statistical utility × system speed (Lai et al., OSDI 2021); "
        "stratified: proportional to declared label histograms' dominant class; or a "
        "policy the operator installed (entry-point group tsfl.selection: "
        "docs/extending.md)"))
    over_selection: Annotated[float, Field(ge=0, le=4)] = Field(0.0, description=(
        "ask ⌈(1 + o)·per_round⌉ devices; the round closes after per_round updates "
        "(quorum of per_round) or its deadline (Bonawitz et al., SysML 2019, §2.1)"))
    exploration: Annotated[float, Field(ge=0, le=1)] = Field(
        0.1, description="speed, oort: share of the cohort drawn at random from the rest")
    preferred_s: PositiveFloat | None = Field(None, description=(
        "oort: the round duration T beyond which a device's utility is penalised "
        "(default: round.deadline_s)"))
    straggler_penalty: Annotated[float, Field(ge=0, le=10)] = Field(
        2.0, description="oort: α in (T / t_i)^α for devices slower than T")

    @field_validator("kind")
    @classmethod
    def _known(cls, kind: str) -> str:
        return known_name(SELECTION_GROUP, kind, BUILT_IN, "selection")
