"""An idle local stack: CPU and memory of the broker and each of the six services while no
job runs, with today's Kafka long poll (500 ms) against the old short poll (10 ms) in the
same run. Targets (issue #20): the whole idle stack under 5% of one core; services that do
not train at most 150 MB RSS each (they never import torch: tests/runtime/test_lean_services.py).

    python -m benchmarks.idle_stack [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS, console, print_table, write_results
from tsfl.runtime import stack
from tsfl.runtime.broker import free_port

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(fetch_wait_ms: int, seconds: float, settle_s: float = 5.0) -> dict[str, Any]:
    """Start a stack with this long poll, let it settle, then sample ``seconds`` of idle."""
    os.environ["TSFL_FETCH_WAIT_MS"] = str(fetch_wait_ms)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "stack"
        state = stack.up(directory, kafka=None, database=None, grpc_port=free_port())
        try:
            pids = {"broker": state.broker_pid,
                    **{name: e["pid"] for name, e in state.services.items()}}
            time.sleep(settle_s)
            before = {n: _cpu_seconds(p) for n, p in pids.items() if p}
            t0 = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - t0
            cpu = {n: 100 * (_cpu_seconds(p) - before[n]) / elapsed
                   for n, p in pids.items() if p}
            rss = {n: _rss_mb(p) for n, p in pids.items() if p}
        finally:
            stack.down(directory)
    return {"fetch_wait_ms": fetch_wait_ms, "cpu_percent": cpu, "rss_mb": rss,
            "total_cpu_percent": sum(cpu.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="idle time sampled")
    args = ap.parse_args(argv)
    runs = []
    for wait in (10, 500):
        console.print(f"[bold]idle stack, Kafka long poll {wait} ms[/] ({args.seconds:.0f} s)")
        runs.append(measure(wait, args.seconds))
    old, new = runs
    names = list(new["cpu_percent"])
    print_table("idle stack: % of one core, RSS MB", ["component", "cpu % (10 ms)",
                                                      "cpu % (500 ms)", "RSS MB"],
                [[n, old["cpu_percent"][n], new["cpu_percent"][n], new["rss_mb"][n]]
                 for n in names]
                + [["total", old["total_cpu_percent"], new["total_cpu_percent"],
                    sum(new["rss_mb"].values())]])
    ratio = new["total_cpu_percent"] / max(old["total_cpu_percent"], 1e-9)
    lean = {n: v for n, v in new["rss_mb"].items() if n not in ("broker", "coordinator")}
    console.print(f"idle CPU: {ratio:.2f}x the 10 ms poll; target < 5% of a core: "
                  f"{'met' if new['total_cpu_percent'] < 5 else 'not met'} "
                  f"({new['total_cpu_percent']:.1f}%); non-training services ≤ 150 MB: "
                  f"{'met' if max(lean.values()) <= 150 else 'not met'} "
                  f"(max {max(lean.values()):.0f} MB)")
    path = write_results("idle_stack", {"runs": runs, "cpu_ratio_vs_short_poll": ratio})
    _plot(runs, names)
    console.print(f"wrote {path}")
    return 0


def _plot(runs: list[dict[str, Any]], names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.4
    xs = range(len(names))
    for i, run in enumerate(runs):
        ax1.bar([x + i * width for x in xs], [run["cpu_percent"][n] for n in names], width,
                label=f"long poll {run['fetch_wait_ms']} ms")
    ax1.set_xticks([x + width / 2 for x in xs], names, rotation=30)
    ax1.set_ylabel("% of one core (idle)")
    ax1.legend()
    ax2.bar(list(xs), [runs[-1]["rss_mb"][n] for n in names])
    ax2.axhline(150, color="red", linestyle="--", label="150 MB target (stage services)")
    ax2.set_xticks(list(xs), names, rotation=30)
    ax2.set_ylabel("RSS MB")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "idle_stack.png", dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
