"""The virtual clock: simulated device speeds, links and availability, and an event queue.

Nothing sleeps: a device's task takes ``wait + download + compute + upload`` simulated
seconds, where (per device ``i``)

* ``compute = epochs · n_i · c_i`` with ``c_i = c̄ · exp(σ_c · z_i)`` seconds per example
  (log-normal device speeds, as FedBuff's simulation draws them: Nguyen et al., AISTATS
  2022, §5 "we sample the training time of each client from a log-normal distribution");
* ``download = bytes_down / b_i + ℓ_i``, ``upload = bytes_up / b_i + ℓ_i`` with the
  bandwidth ``b_i = b̄ · exp(σ_b · z'_i)`` (or ``c_i, b_i, ℓ_i`` from a trace row);
* ``wait``: the time until the device is next online — it is online during
  ``[φ_i, φ_i + f·T)`` of every period ``T`` (availability windows, phase ``φ_i``
  uniform), and a task it starts runs to the end.

Every draw is seeded by (job seed, purpose): two runs of a spec see the same devices.
"""

from __future__ import annotations

import csv
import heapq
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tsfl.config.clock import (
    MAX_BANDWIDTH_MBPS,
    MAX_COMPUTE_S_PER_EXAMPLE,
    MAX_LATENCY_MS,
    MAX_TRACE_BYTES,
    MAX_TRACE_ROWS,
    ClockSpec,
)
from tsfl.errors import TsflError

TRACE_COLUMNS = ("compute_s_per_example", "bandwidth_mbps", "latency_ms")


class TraceError(TsflError, ValueError):
    """A trace file that cannot be used (unreadable, malformed, out of bounds)."""


def read_trace(path: str | Path) -> np.ndarray:
    """The rows of a device trace (csv with a header naming :data:`TRACE_COLUMNS`), as an
    ``(rows, 3)`` float array; every value finite and within the spec's bounds."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_TRACE_BYTES:
            raise TraceError(f"{p}: {size} bytes, above the {MAX_TRACE_BYTES}-byte limit")
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise TraceError(f"{p}: cannot read it ({exc.strerror or type(exc).__name__})"
                         ) from None
    except UnicodeDecodeError:
        raise TraceError(f"{p}: not a UTF-8 csv file") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in TRACE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise TraceError(f"{p}: missing column(s) {', '.join(missing)}")
    bounds = ((0.0, MAX_COMPUTE_S_PER_EXAMPLE, False), (0.0, MAX_BANDWIDTH_MBPS, False),
              (0.0, MAX_LATENCY_MS, True))
    rows: list[list[float]] = []
    for line, row in enumerate(reader, start=2):
        if len(rows) >= MAX_TRACE_ROWS:
            raise TraceError(f"{p}: more than {MAX_TRACE_ROWS} rows")
        values = []
        for col, (lo, hi, zero_ok) in zip(TRACE_COLUMNS, bounds, strict=True):
            try:
                v = float(row[col])
            except (TypeError, ValueError):
                raise TraceError(f"{p}:{line}: {col} is not a number") from None
            if not math.isfinite(v) or v > hi or v < lo or (v == lo and not zero_ok):
                raise TraceError(f"{p}:{line}: {col}={row[col]} outside "
                                 f"{'[' if zero_ok else '('}{lo:g}, {hi:g}]")
            values.append(v)
        rows.append(values)
    if not rows:
        raise TraceError(f"{p}: no rows")
    return np.asarray(rows, dtype=np.float64)


@dataclass(frozen=True)
class DeviceProfile:
    compute_s_per_example: float
    bandwidth_bytes_s: float
    latency_s: float
    phase_s: float  # start of the online window within each period


class DeviceProfiles:
    """Every simulated device's speed, link and availability (from ``spec``)."""

    def __init__(self, spec: ClockSpec, client_ids: Sequence[str], seed: int, *,
                 base_dir: Path | None = None):
        self.spec = spec
        self.index = {cid: i for i, cid in enumerate(client_ids)}
        n = len(client_ids)
        rng = np.random.default_rng([seed, 0xC10C])
        if spec.speeds == "trace":
            assert spec.trace is not None
            path = Path(spec.trace)
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
            table = read_trace(path)
            rows = table[np.arange(n) % len(table)]
            self.compute = rows[:, 0]
            self.bandwidth = rows[:, 1] * 1e6 / 8
            self.latency = rows[:, 2] / 1e3
        else:
            z = rng.standard_normal((2, n))
            self.compute = spec.compute_s_per_example * np.exp(spec.compute_sigma * z[0])
            self.bandwidth = spec.bandwidth_mbps * 1e6 / 8 * np.exp(spec.bandwidth_sigma * z[1])
            self.latency = np.full(n, spec.latency_ms / 1e3)
        self.phase = rng.random(n) * spec.period_s

    def profile(self, cid: str) -> DeviceProfile:
        i = self.index[cid]
        return DeviceProfile(float(self.compute[i]), float(self.bandwidth[i]),
                             float(self.latency[i]), float(self.phase[i]))

    def online(self, cid: str, t: float) -> bool:
        s = self.spec
        if s.online_fraction >= 1.0:
            return True
        since = (t - self.phase[self.index[cid]]) % s.period_s
        return bool(since < s.online_fraction * s.period_s)

    def next_online(self, cid: str, t: float) -> float:
        """The first time ≥ ``t`` the device is online."""
        if self.online(cid, t):
            return t
        s = self.spec
        since = (t - self.phase[self.index[cid]]) % s.period_s
        return t + (s.period_s - since)

    def task_seconds(self, cid: str, examples: int, epochs: int, bytes_down: int,
                     bytes_up: int) -> float:
        """Download, local training and upload time of one task (no waiting)."""
        i = self.index[cid]
        link = (bytes_down + bytes_up) / self.bandwidth[i] + 2 * self.latency[i]
        return float(epochs * examples * self.compute[i] + link)

    def expected_seconds(self, cid: str, examples: int, epochs: int, model_bytes: int
                         ) -> float:
        """What a selector may estimate of a task's duration (full-model transfers)."""
        return self.task_seconds(cid, examples, epochs, model_bytes, model_bytes)


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    item: Any = field(compare=False)


class VirtualClock:
    """Simulated time and a queue of future events, popped in time order (ties in the
    order they were scheduled)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[_Event] = []
        self._seq = 0

    def schedule(self, at: float, item: Any) -> None:
        if at < self.now:
            raise ValueError(f"cannot schedule at {at} before now ({self.now})")
        heapq.heappush(self._queue, _Event(at, self._seq, item))
        self._seq += 1

    def pop(self) -> tuple[float, Any]:
        """The next event; the clock moves to its time."""
        event = heapq.heappop(self._queue)
        self.now = event.time
        return event.time, event.item

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not run backwards")
        self.now += seconds

    def __len__(self) -> int:
        return len(self._queue)


def model_bytes(parameters: int) -> int:
    """A full float32 model's bytes (what a download or an uncompressed upload moves)."""
    return 4 * int(parameters)
