"""``tsfl bench robustness``: aggregator × attack (× IID and Dirichlet 0.5) on digits.

Each cell runs the embedded pipeline (the real byzantine stage and aggregator) on
``examples/digits-byzantine.yaml`` with the cell's rule and attack, and records final
accuracy, detection TPR and FPR (refused updates over the run) and, for the backdoor,
its success rate. Attack-free FedAvg is the reference row. Writes ``robustness.md`` (a
table per partition), ``robustness.json`` and ``robustness.png`` (heatmaps).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from tsfl.config import ATTACKS as ATTACK_KINDS
from tsfl.config import ROBUST_AGGREGATORS, JobSpec, bundled_example, load_job
from tsfl.runtime.embedded import run_embedded

#: "fedavg" is the row without a robust rule (robust.aggregator: none)
AGGREGATORS = ["fedavg", *(a for a in ROBUST_AGGREGATORS if a != "none")]
ATTACKS = list(ATTACK_KINDS)
PARTITIONS = {"iid": {"kind": "iid"}, "dirichlet-0.5": {"kind": "dirichlet", "alpha": 0.5}}
QUICK = (["fedavg", "median", "wfagg"], ["none", "sign_flip", "scaling"], ["iid"], 5)


def cell_spec(base: JobSpec, aggregator: str, attack: str, partition: str,
              rounds: int) -> JobSpec:
    data = base.model_dump(mode="json")
    data["rounds"] = rounds
    data["name"] = f"{base.name}-{aggregator}-{attack}-{partition}"
    data["data"]["partition"] = PARTITIONS[partition]
    r = data["robust"]
    r["aggregator"] = "none" if aggregator == "fedavg" else aggregator
    if aggregator == "norm_bounding":
        r["max_norm"] = r.get("max_norm") or 1.0
    if aggregator == "trimmed_mean":
        r["beta"] = 0.25
    data["attacks"] = ({"kind": "none", "fraction": 0.0} if attack == "none" else
                       {**data["attacks"], "kind": attack})
    return JobSpec.model_validate(data)


def run_cell(spec: JobSpec) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        res = asyncio.run(run_embedded(spec, Path(tmp)))
    acc = next((m["test_accuracy"] for m in reversed(res.metrics)
                if m["test_accuracy"] is not None), None)
    r = res.robustness or {}
    return {"accuracy": acc, "tpr": r.get("tpr"), "fpr": r.get("fpr"),
            "backdoor_success_rate": r.get("backdoor_success_rate"), "status": res.status}


def markdown(results: dict[str, dict[str, dict[str, dict[str, Any]]]], rounds: int) -> str:
    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    lines = [f"# Robustness on digits ({rounds} rounds; 50 clients a round, 20% malicious)",
             ""]
    for part, table in results.items():
        aggs = list(table)
        attacks = list(next(iter(table.values())))
        lines += [f"## {part}: final accuracy (TPR / FPR; backdoor: success rate)", "",
                  "| aggregator | " + " | ".join(attacks) + " |",
                  "|---|" + "---:|" * len(attacks)]
        for agg in aggs:
            cells = []
            for att in attacks:
                c = table[agg][att]
                extra = ""
                if att == "backdoor":
                    extra = f" (ASR {fmt(c['backdoor_success_rate'])})"
                elif att != "none" and c["tpr"] is not None:
                    extra = f" ({fmt(c['tpr'])} / {fmt(c['fpr'])})"
                cells.append(fmt(c["accuracy"]) + extra)
            lines.append(f"| {agg} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def heatmap(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = [("accuracy", "final accuracy"), ("tpr", "detection TPR"), ("fpr", "FPR")]
    fig, axes = plt.subplots(len(results), len(metrics), squeeze=False,
                             figsize=(5.5 * len(metrics), 3.6 * len(results)))
    for row, (part, table) in enumerate(results.items()):
        aggs = list(table)
        attacks = list(next(iter(table.values())))
        for col, (key, title) in enumerate(metrics):
            ax = axes[row][col]
            grid = np.array([[np.nan if table[a][t][key] is None else table[a][t][key]
                              for t in attacks] for a in aggs], dtype=float)
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis" if key != "fpr" else "magma_r")
            ax.set_xticks(range(len(attacks)), attacks, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(aggs)), aggs, fontsize=8)
            for i in range(len(aggs)):
                for j in range(len(attacks)):
                    if not np.isnan(grid[i, j]):
                        ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center",
                                fontsize=7, color="w")
            ax.set_title(f"{part}: {title}")
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_bench(out_dir: Path, *, quick: bool = False, rounds: int | None = None,
              aggregators: list[str] | None = None, attacks: list[str] | None = None,
              partitions: list[str] | None = None) -> dict[str, Any]:
    base = load_job(bundled_example("digits-byzantine"))
    if quick:
        aggs, atts, parts, n = QUICK
    else:
        aggs, atts, parts, n = AGGREGATORS, ATTACKS, list(PARTITIONS), base.rounds
    aggs, atts, parts = aggregators or aggs, attacks or atts, partitions or parts
    rounds = rounds or n
    results: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    console = Console(stderr=True)
    with Progress(console=console) as progress:
        task = progress.add_task("robustness", total=len(aggs) * len(atts) * len(parts))
        for part in parts:
            for agg in aggs:
                for att in atts:
                    progress.update(task, description=f"{part} {agg} × {att}")
                    spec = cell_spec(base, agg, att, part, rounds)
                    results.setdefault(part, {}).setdefault(agg, {})[att] = run_cell(spec)
                    progress.advance(task)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "robustness.json").write_text(json.dumps(
        {"rounds": rounds, "results": results}, indent=1))
    (out_dir / "robustness.md").write_text(markdown(results, rounds))
    heatmap(results, out_dir / "robustness.png")
    return results
