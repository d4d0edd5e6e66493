"""Update compression: the uplink codec chain, the downlink, adaptive strength."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tsfl.config import compat
from tsfl.config.base import Spec


class UplinkSpec(Spec):
    """The codec chain devices encode their updates with: [sparsifier] values [lossless]."""

    chain: list[str] = Field(default_factory=lambda: ["f32"], description=(
        "e.g. [topk, q8, zstd]; sparsifiers topk|randk, values f32|q8|q4|q2|qsgd, "
        "lossless zstd|lz4"))
    ratio: Annotated[float, Field(gt=0, le=1)] = Field(
        0.01, description="topk/randk: fraction of coordinates sent")
    block: Annotated[int, Field(ge=8, le=1 << 20, multiple_of=8)] = Field(
        256, description="values per quantization block (one scale each)")
    levels: Annotated[int, Field(ge=1, le=127)] = Field(16, description="QSGD levels s")
    error_feedback: bool = Field(True, description=(
        "devices keep what compression dropped and add it to their next update"))

    @model_validator(mode="after")
    def _check(self) -> UplinkSpec:
        compat.check_codec_chain(self.chain)
        return self


class AdaptiveCompressionSpec(Spec):
    """Per-device codec strength from its measured bandwidth, to meet the round deadline."""

    deadline_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5, description="an upload should fit in this share of round.deadline_s")
    min_ratio: Annotated[float, Field(gt=0, le=1)] = Field(
        0.01, description="the accuracy budget: never keep fewer coordinates than this")


class CompressionSpec(Spec):
    uplink: UplinkSpec = UplinkSpec()
    downlink: Literal["full", "delta"] = Field("full", description=(
        "delta: a device that holds an earlier model gets new XOR old, shuffled + zstd "
        "(lossless)"))
    skip_below: Annotated[float, Field(ge=0)] = Field(0.0, description=(
        "a device whose ‖update + residual‖ / ‖model‖ is below this skips its upload and "
        "says so"))
    adaptive: AdaptiveCompressionSpec | None = None
