"""The virtual clock of a simulation (``simulation.clock``): how long each simulated
device takes to download, train and upload, and when it is online.

Time is *simulated*: nothing sleeps. A device's compute speed (seconds per local example
and epoch) and link (bandwidth, latency) are drawn log-normally per device (the device
heterogeneity model of FedBuff, Nguyen et al. AISTATS 2022, §5, and of Oort, Lai et al.
OSDI 2021, §7.1) or read from a trace file; each device is online a fraction of every
period, at its own phase.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tsfl.config.base import Fraction, PositiveFloat, Spec

#: bounds on a device's simulated characteristics (a trace is untrusted input)
MAX_COMPUTE_S_PER_EXAMPLE = 1e4
MAX_BANDWIDTH_MBPS = 1e5
MAX_LATENCY_MS = 6e5
MAX_TRACE_BYTES = 16 << 20
MAX_TRACE_ROWS = 1_000_000


class ClockSpec(Spec):
    """Per-device compute speed and link, and availability windows (simulated seconds)."""

    speeds: Literal["lognormal", "trace"] = Field("lognormal", description=(
        "lognormal: each device's compute time and bandwidth ~ median · exp(σ·N(0,1)); "
        "trace: rows of a csv file (compute_s_per_example, bandwidth_mbps, latency_ms), "
        "device i taking row i mod rows"))
    compute_s_per_example: Annotated[float, Field(gt=0, le=MAX_COMPUTE_S_PER_EXAMPLE)] = Field(
        0.01, description="median seconds a device spends per local example and epoch")
    compute_sigma: Annotated[float, Field(ge=0, le=3)] = Field(
        1.0, description="log-normal σ of the per-device compute time")
    bandwidth_mbps: Annotated[float, Field(gt=0, le=MAX_BANDWIDTH_MBPS)] = Field(
        8.0, description="median link bandwidth, Mbit/s (downloads and uploads)")
    bandwidth_sigma: Annotated[float, Field(ge=0, le=3)] = 1.0
    latency_ms: Annotated[float, Field(ge=0, le=MAX_LATENCY_MS)] = 50.0
    trace: Annotated[str, Field(min_length=1, max_length=4096)] | None = Field(
        None, description="the csv trace file (speeds: trace)")
    online_fraction: Fraction = Field(
        1.0, description="each device is online this fraction of every period (1: always)")
    period_s: PositiveFloat = Field(86_400.0, description="the availability period, seconds")
    server_s: Annotated[float, Field(ge=0, le=1e6)] = Field(
        0.0, description="server time per round or release (aggregation, evaluation)")

    @model_validator(mode="after")
    def _check(self) -> ClockSpec:
        if (self.speeds == "trace") != (self.trace is not None):
            raise ValueError("simulation.clock: speeds 'trace' and trace (a file) go "
                             "together")
        if self.trace is not None and (".." in self.trace.replace("\\", "/").split("/")
                                       or "\x00" in self.trace):
            raise ValueError("simulation.clock.trace: no '..' components or NUL bytes")
        return self
