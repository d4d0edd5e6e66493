"""``results/async_fl.png`` from :mod:`benchmarks.async_fl`'s payload: FedBuff against
FedAvg in simulated seconds (synthetic task), then one panel per task of every variant's
accuracy against rounds (seed 0, trailing mean)."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks._common import RESULTS
from benchmarks.async_fl_tasks import SMOOTH


def _smooth_pts(pts: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    xs = [x for x, _ in pts][SMOOTH - 1:]
    ys = [statistics.fmean(a for _, a in pts[i - SMOOTH + 1:i + 1])
          for i in range(SMOOTH - 1, len(pts))]
    return xs, ys


def _time_panel(ax: Any, table: dict[str, Any]) -> None:
    fb = table["fedbuff"]["curves"]
    for label, runs in (("FedAvg (sync)", fb["sync"]), ("FedBuff (K=10, C=100)", fb["async"])):
        for i, pts in enumerate(runs):
            ax.plot(*_smooth_pts(pts), label=f"{label}, seed {i}", alpha=0.85)
    ax.axhline(table["target_accuracy"], color="gray", linestyle="--",
               label="target (0.9 × plateau)")
    ax.axhline(table["centralised_upper_bound"]["test_accuracy"], color="black",
               linestyle=":", label="centralised logreg")
    ax.set_xscale("log")
    ax.set_xlabel("simulated seconds")
    ax.set_title("Synthetic(1,1): sync vs async, lognormal device times (σ=1)", fontsize=9)


def _rounds_panel(ax: Any, name: str, table: dict[str, Any]) -> None:
    styles = ["-", "--", ":", "-."]
    for i, (label, runs) in enumerate(table["curves"].items()):
        ratio = table["rounds_to_target"][label]["ratio"]
        tag = "not reached" if ratio is None else f"{ratio:.2f}×"
        ax.plot(*_smooth_pts(runs[0]), label=f"{label} ({tag})",
                linestyle=styles[(i // 10) % len(styles)], linewidth=1.2)
    ax.axhline(table["target_accuracy"], color="gray", linestyle="--")
    ax.set_xlabel(f"round (seed {table['seeds'][0]})")
    ax.set_title(f"{name}: rounds to {table['target_accuracy']:.3f}", fontsize=9)


def plot(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = result["tasks"]
    panels: list[tuple[str, str]] = [("time", n) for n in tasks if "fedbuff" in tasks[n]]
    panels += [("rounds", n) for n in tasks]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    for ax, (kind, name) in zip(axes[0], panels, strict=True):
        if kind == "time":
            _time_panel(ax, tasks[name])
        else:
            _rounds_panel(ax, name, tasks[name])
        ax.set_ylabel(f"test accuracy (trailing mean of {SMOOTH})")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "async_fl.png", dpi=110)
    plt.close(fig)
