"""End to end: ``tsfl run`` against a plain training loop and Flower's simulation engine.

All three train the reference job (``benchmarks/configs/digits-reference.yaml``) with the
same model, partition, initial weights and local hyper-parameters:

* ``tsfl``   — the embedded deployment (coordinator and aggregator over the in-memory bus,
               SQLite persistence, the SDK client runner), to 0.90 test accuracy;
* ``plain``  — the no-framework floor: one process, the same cohorts and client seeds, local
               training and a numpy weighted mean, nothing else, to 0.90;
* ``flower`` — Flower's simulation engine (Message API, Ray backend) for ``--flower-rounds``
               rounds (Flower samples its own cohorts, so only its time per round is
               comparable; Ray's start-up is excluded).

Every round of every contender includes the central evaluation. Run:
``python -m benchmarks.end_to_end [--flower-rounds N] [--skip-flower]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import console, print_table, write_results
from tsfl.config import JobSpec, load_job
from tsfl.pipeline.selection import UniformSelector, client_seed
from tsfl.runtime.embedded import run_embedded
from tsfl.runtime.simulation import build_federation
from tsfl.training.loop import evaluate, train_epochs

CONFIG = Path(__file__).parent / "configs" / "digits-reference.yaml"


def run_tsfl(spec: JobSpec) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = asyncio.run(run_embedded(spec, Path(tmp)))
        total = time.perf_counter() - t0
    accs = [m["test_accuracy"] for m in result.metrics]
    walls = [m["wall_s"] for m in result.metrics]
    return {"rounds_to_target": _first_at(accs, spec.target_accuracy), "rounds": len(accs),
            "final_accuracy": accs[-1], "s_per_round": statistics.mean(walls[1:]),
            "total_s": total}


def run_plain(spec: JobSpec) -> dict[str, Any]:
    """The floor: the same work with no framework around it."""
    fed = build_federation(spec)
    selector = UniformSelector(spec.seed)
    x = fed.initial.copy()
    ws = fed.workspace
    accs, walls = [], []
    t_start = time.perf_counter()
    for rnd in range(1, spec.rounds + 1):
        t0 = time.perf_counter()
        acc, total = np.zeros_like(x), 0
        for cid in selector.select(rnd, fed.client_ids, spec.clients.per_round):
            client = fed.clients[cid]
            ws.load(x)
            rng = np.random.default_rng(client_seed(spec.seed, rnd, cid))
            train_epochs(ws.module, ws.params, client.x, client.y, client.settings, rng)
            n = len(client.y)
            acc += n * (ws.vector - x)
            total += n
        x = x + acc / total
        fed.evaluator.load(x)
        _, a = evaluate(fed.evaluator.module, fed.x_test, fed.y_test)
        accs.append(a)
        walls.append(time.perf_counter() - t0)
        if a >= spec.target_accuracy:
            break
    return {"rounds_to_target": _first_at(accs, spec.target_accuracy), "rounds": len(accs),
            "final_accuracy": accs[-1], "s_per_round": statistics.mean(walls[1:]),
            "total_s": time.perf_counter() - t_start}


def run_flower(spec: JobSpec, rounds: int) -> dict[str, Any]:
    """Flower's simulation engine on the same federation (Message API, Ray backend)."""
    import logging

    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    fed = build_federation(spec)
    stamps: list[float] = []
    accs: list[float] = []

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(spec.simulation.torch_threads)
        pid = int(context.node_config["partition-id"])
        client = fed.clients[fed.client_ids[pid]]
        module = fed.workspace.module
        module.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        rng = np.random.default_rng([spec.seed, pid, len(stamps)])
        loss = train_epochs(module, fed.workspace.params, client.x, client.y,
                            client.settings, rng)
        content = RecordDict({"arrays": ArrayRecord(module.state_dict()),
                              "metrics": MetricRecord({"train_loss": loss,
                                                       "num-examples": len(client.y)})})
        return Message(content=content, reply_to=msg)

    def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        fed.evaluator.module.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate(fed.evaluator.module, fed.x_test, fed.y_test)
        stamps.append(time.perf_counter())
        accs.append(acc)
        return MetricRecord({"loss": loss, "accuracy": acc})

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=spec.clients.per_round / spec.clients.count,
                          fraction_evaluate=0.0, min_train_nodes=spec.clients.per_round,
                          min_available_nodes=spec.clients.count)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(fed.workspace.module.state_dict()),
                       num_rounds=rounds, evaluate_fn=central_eval)

    t0 = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app,
                   num_supernodes=spec.clients.count,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    total = time.perf_counter() - t0
    # stamps[0] is the evaluation of the initial model (round 0): per-round times from there
    per_round = np.diff(stamps)
    return {"rounds": rounds, "final_accuracy": accs[-1],
            "s_per_round": float(np.mean(per_round[1:])) if len(per_round) > 1 else float("nan"),
            "total_s": total}


def _first_at(accs: list[float], target: float | None) -> int | None:
    if target is None:
        return None
    return next((i + 1 for i, a in enumerate(accs) if a >= target), None)


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("plain", "tsfl", "flower") if n in results]
    ms = [results[n]["s_per_round"] * 1000 for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, ms, color=["tab:gray", "tab:blue", "tab:orange"][: len(names)])
    ax.set_yscale("log")
    ax.set_ylabel("ms per round (log)")
    ax.set_title("digits reference job: time per round")
    for i, v in enumerate(ms):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--flower-rounds", type=int, default=15)
    parser.add_argument("--skip-flower", action="store_true")
    args = parser.parse_args()
    spec = load_job(args.config)
    results: dict[str, dict[str, Any]] = {}
    with console.status("plain loop to the target ..."):
        results["plain"] = run_plain(spec)
    with console.status("tsfl run to the target ..."):
        results["tsfl"] = run_tsfl(spec)
    if not args.skip_flower:
        with console.status(f"Flower simulation, {args.flower_rounds} rounds ..."):
            results["flower"] = run_flower(spec, args.flower_rounds)
    plain, ours = results["plain"], results["tsfl"]
    ratios = {
        "tsfl_over_plain_per_round": ours["s_per_round"] / plain["s_per_round"],
        "rounds_tsfl_over_plain": (ours["rounds_to_target"] or float("nan"))
        / (plain["rounds_to_target"] or float("nan")),
    }
    if "flower" in results:
        flower_round = results["flower"]["s_per_round"]
        ratios["flower_over_tsfl_per_round"] = flower_round / ours["s_per_round"]
        ratios["flower_over_plain_per_round"] = (results["flower"]["s_per_round"]
                                                 / plain["s_per_round"])
    print_table("digits reference job", ["", "rounds to 0.90", "rounds run", "final acc",
                                         "ms/round", "total s"],
                [[n, r.get("rounds_to_target", "-"), r["rounds"], r["final_accuracy"],
                  r["s_per_round"] * 1000, r["total_s"]] for n, r in results.items()])
    for k, v in ratios.items():
        console.print(f"{k}: {v:.2f}")
    path = write_results("end_to_end", {"config": args.config, "results": results,
                                        "ratios": ratios})
    plot(results, path.with_suffix(".png"))
    console.print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
