"""CPU and memory of processes, read from ``/proc`` (Linux): what a load test reports for
every service of the stack.

:class:`ProcSampler` samples a set of named pids from a background thread: CPU seconds
used between :meth:`~ProcSampler.start` and :meth:`~ProcSampler.stop` (utime + stime,
so children's time is not counted), the mean share of one core over that window, and
the peak resident set (the largest sampled ``VmRSS`` and the kernel's ``VmHWM``).
A process that exits meanwhile keeps what was last read of it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: set to a directory, a service run by ``tsfl service`` profiles its event loop's thread
#: (cProfile) and writes DIR/NAME.prof when it stops (a load test's evidence; ~1.5× slower)
PROFILE_ENV = "TSFL_PROFILE_DIR"

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def run_profiled(name: str, fn: Callable[[], T]) -> T:
    """``fn()``, under cProfile when :data:`PROFILE_ENV` names a directory (the stats
    written there as ``name.prof`` however ``fn`` ends)."""
    directory = os.environ.get(PROFILE_ENV)
    if not directory:
        return fn()
    import cProfile

    prof = cProfile.Profile()
    try:
        return prof.runcall(fn)
    finally:
        Path(directory).mkdir(parents=True, exist_ok=True)
        prof.dump_stats(str(Path(directory) / f"{name}.prof"))


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) ``pid`` has used, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_mb(pid: int) -> tuple[float, float] | None:
    """``(VmRSS, VmHWM)`` of ``pid`` in MiB, or None when it is gone."""
    rss = hwm = None
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    if rss is None:
        return None
    return rss, hwm if hwm is not None else rss


@dataclass
class ProcUsage:
    """One process over a sampled window."""

    pid: int
    cpu_s: float = 0.0
    cpu_percent: float = 0.0  # of one core, averaged over the window
    rss_mb: float = 0.0       # last sampled
    peak_rss_mb: float = 0.0  # the larger of the sampled maximum and VmHWM

    def as_dict(self) -> dict[str, float | int]:
        return {"pid": self.pid, "cpu_s": round(self.cpu_s, 2),
                "cpu_percent": round(self.cpu_percent, 1), "rss_mb": round(self.rss_mb, 1),
                "peak_rss_mb": round(self.peak_rss_mb, 1)}


class ProcSampler:
    """Samples ``pids`` (name -> pid) every ``interval_s`` until :meth:`stop`."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.5):
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.interval_s = interval_s
        self.usage = {name: ProcUsage(pid) for name, pid in self.pids.items()}
        self._cpu0: dict[str, float] = {}
        self._cpu_last: dict[str, float] = {}
        self._t0 = 0.0
        self._elapsed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, pid: int) -> None:
        """Sample one more process from now on (its CPU counts from this moment)."""
        self.pids[name] = pid
        self.usage[name] = ProcUsage(pid)
        cpu = cpu_seconds(pid)
        if cpu is not None:
            self._cpu0[name] = self._cpu_last[name] = cpu

    def start(self) -> ProcSampler:
        self._t0 = time.monotonic()
        for name, pid in self.pids.items():
            cpu = cpu_seconds(pid)
            if cpu is not None:
                self._cpu0[name] = self._cpu_last[name] = cpu
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        for name, pid in list(self.pids.items()):
            usage = self.usage[name]
            cpu = cpu_seconds(pid)
            if cpu is not None:
                self._cpu_last[name] = cpu
                self._cpu0.setdefault(name, cpu)
            mem = memory_mb(pid)
            if mem is not None:
                usage.rss_mb = mem[0]
                usage.peak_rss_mb = max(usage.peak_rss_mb, *mem)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def stop(self) -> dict[str, ProcUsage]:
        """Stop sampling; each process's usage over the window."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self._elapsed = max(time.monotonic() - self._t0, 1e-9)
        for name, usage in self.usage.items():
            if name in self._cpu0:
                usage.cpu_s = self._cpu_last[name] - self._cpu0[name]
                usage.cpu_percent = 100 * usage.cpu_s / self._elapsed
        return self.usage

    @property
    def elapsed_s(self) -> float:
        return self._elapsed
