"""Scale of the embedded simulation: batched cohort training against the per-client loop,
and the memory of a 1,000,000-client seeded population.

Contenders, on the same cohort, initial model, client seeds and settings in one run
(the population and settings of ``examples/synthetic-10k.yaml``: Synthetic-IID,
20–200 records a client, SGD lr 0.5, 2 epochs, batch 10):

- **plain**: :func:`tsfl.training.loop.train_epochs`, one client after another on the
  shared workspace module — what ``simulation.batched: off`` runs;
- **batched**: :func:`tsfl.training.batched.train_cohort`, the cohort in chunks of
  vectorised steps (``torch.func.vmap`` of ``grad`` over clients) — ``batched: auto``.

Both read the same materialised records (generation is timed apart; batched: median of
3, plain: once — it takes minutes at 10,000; each row in a fresh process); the table
gives local-training clients/s at 1,000 and 10,000 clients a round for logistic
regression and a small MLP (60-64-10), the ratio, and the largest difference between the
two paths' trained models.
``--embedded`` adds the whole embedded round (download, decode, train, encode, upload,
aggregate, evaluate: ``run_embedded``, one client registered per device) with ``batched:
auto`` against ``off``. The memory row builds a 1,000,000-client population in a fresh
process, trains one 1,000-client cohort batched, and reports its peak RSS against what
the same population's records would take materialised whole.

Run: ``python -m benchmarks.scale_embedded [--cohorts 1000 10000] [--embedded]``; writes
``results/scale_embedded.json`` and ``results/scale_embedded.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import console, print_table, timeit, write_results
from tsfl.config import JobSpec, bundled_example, load_job
from tsfl.pipeline.selection import client_seed
from tsfl.runtime.embedded import run_embedded
from tsfl.runtime.simulation import client_name
from tsfl.sim.models import build_model
from tsfl.sim.population import SyntheticPopulation
from tsfl.training.batched import Member, train_cohort
from tsfl.training.flat import FlatModule
from tsfl.training.loop import TrainSettings, train_epochs

MODELS = {"logreg": {"kind": "logreg"}, "mlp-64": {"kind": "mlp", "hidden": [64]}}


def example(model: dict[str, Any], count: int, rounds: int = 1, batched: str = "auto"
            ) -> JobSpec:
    return load_job(bundled_example("synthetic-10k"), {
        "model": model, "rounds": rounds, "clients": {"count": count, "per_round": count},
        "simulation": {"batched": batched}})


def cohort(spec: JobSpec) -> tuple[list[Member], float]:
    """The first round's cohort (everyone), its records materialised; generation time."""
    d = spec.data
    population = SyntheticPopulation(d.synthetic, spec.clients.count, d.test_fraction,
                                      d.split_seed)
    t0 = time.perf_counter()
    members = []
    for k in range(spec.clients.count):
        x, y = population.train(k)
        members.append(Member(torch.from_numpy(x), torch.from_numpy(y),
                              client_seed(spec.seed, 1, client_name(k))))
    return members, time.perf_counter() - t0


def training_row(name: str, model: dict[str, Any], count: int) -> dict[str, Any]:
    spec = example(model, count)
    torch.set_num_threads(spec.simulation.torch_threads)
    members, gen_s = cohort(spec)
    flat = FlatModule(build_model(spec.model, (spec.data.synthetic.dim,),
                                  spec.data.synthetic.classes, spec.seed))
    start = flat.vector.copy()
    t = spec.training
    settings = TrainSettings(optimizer=t.optimizer, lr=t.lr, momentum=t.momentum,
                             weight_decay=t.weight_decay, epochs=t.epochs,
                             batch_size=t.batch_size)
    train_cohort(flat.module, flat.layout, start, members[:64], settings)  # warm-up
    batched_s = timeit(lambda: train_cohort(flat.module, flat.layout, start, members,
                                            settings), repeats=3, warmup=0)
    batched = train_cohort(flat.module, flat.layout, start, members, settings)
    worst = 0.0
    t0 = time.perf_counter()
    for k, m in enumerate(members):
        flat.load(start)
        train_epochs(flat.module, flat.params, m.x, m.y, settings,
                     np.random.default_rng(m.seed))
        worst = max(worst, float(np.abs(flat.vector - batched.vectors[k]).max()))
    plain_s = time.perf_counter() - t0  # (the comparison costs ~1% of it)
    return {"model": name, "parameters": flat.layout.total_size, "clients": count,
            "records": int(sum(len(m.y) for m in members)), "generate_s": gen_s,
            "plain_s": plain_s, "batched_s": batched_s,
            "plain_clients_per_s": count / plain_s, "batched_clients_per_s": count / batched_s,
            "speedup": plain_s / batched_s, "max_abs_diff": worst}


def fresh(*args: str) -> dict[str, Any]:
    """One row measured in a fresh process (rows do not share allocator state or warm
    caches), as JSON on its last line of output."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.scale_embedded", *args],
                         check=True, capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def embedded_row(name: str, model: dict[str, Any], count: int, rounds: int = 2
                 ) -> dict[str, Any]:
    """Seconds per round of the whole embedded run (the last round's: after warm-up)."""
    out: dict[str, Any] = {"model": name, "clients": count, "rounds": rounds}
    for mode in ("off", "auto"):
        spec = example(model, count, rounds, mode)
        with tempfile.TemporaryDirectory() as tmp:
            result = asyncio.run(run_embedded(spec, Path(tmp)))
        out[f"{mode}_round_s"] = result.metrics[-1]["wall_s"]
        out[f"{mode}_accuracy"] = result.metrics[-1]["test_accuracy"]
    out["speedup"] = out["off_round_s"] / out["auto_round_s"]
    return out


MEMORY_SCRIPT = """
import json, sys, time
import numpy as np, torch
from tsfl.config import bundled_example, load_job
from tsfl.pipeline.selection import UniformSelector, client_seed
def rss(field):  # this process's own (VmHWM: its peak; ru_maxrss survives exec)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
floor = rss("VmHWM")
from tsfl.runtime.simulation import build_federation
from tsfl.training.batched import Member, train_cohort
count, per_round = int(sys.argv[1]), int(sys.argv[2])
spec = load_job(bundled_example("synthetic-10k"), {
    "clients": {"count": count, "per_round": per_round}})
t0 = time.perf_counter()
fed = build_federation(spec)
build_s = time.perf_counter() - t0
built = rss("VmHWM")
ids = UniformSelector(spec.seed).select(1, fed.client_ids, per_round)
t0 = time.perf_counter()
members = [Member(fed.clients[c].x, fed.clients[c].y, client_seed(spec.seed, 1, c))
           for c in ids]
c = fed.clients[ids[0]]
train_cohort(fed.workspace.module, fed.workspace.layout, fed.initial, members, c.settings)
round_s = time.perf_counter() - t0
population = c.records.population
sample = np.random.default_rng(0).choice(count, 10_000, replace=False)
mean_records = float(np.mean([population.num_examples(int(k)) for k in sample]))
record_bytes = 4 * spec.data.synthetic.dim + 8
print(json.dumps({"clients": count, "cohort": per_round, "build_s": build_s,
                  "cohort_s": round_s, "floor_rss": floor, "built_rss": built,
                  "peak_rss": rss("VmHWM"), "clients_made": fed.clients.made,
                  "eager_records_bytes": mean_records * count * record_bytes}))
"""


def memory_row(count: int, per_round: int) -> dict[str, Any]:
    """Peak RSS of a fresh process that builds the population and trains one cohort."""
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(count), str(per_round)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(training: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\n{r['clients']:,}" for r in training]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.bar(x - 0.2, [r["plain_clients_per_s"] for r in training], 0.4, label="plain loop",
           color="tab:gray")
    ax.bar(x + 0.2, [r["batched_clients_per_s"] for r in training], 0.4, label="batched",
           color="tab:blue")
    for i, r in enumerate(training):
        ax.text(i + 0.2, r["batched_clients_per_s"], f"{r['speedup']:.1f}×", ha="center",
                va="bottom")
    ax.set_xticks(x, labels)
    ax.set_yscale("log")
    ax.set_ylabel("clients trained / s (log)")
    ax.set_title("local training of a round's cohort (1 thread)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--embedded", action="store_true",
                        help="also time whole embedded rounds, batched auto against off")
    parser.add_argument("--population", type=int, default=1_000_000)
    parser.add_argument("--population-cohort", type=int, default=1000)
    parser.add_argument("--row", nargs=2, metavar=("MODEL", "CLIENTS"),
                        help=argparse.SUPPRESS)  # one training row, in this process
    args = parser.parse_args()
    if args.row:
        print(json.dumps(training_row(args.row[0], MODELS[args.row[0]], int(args.row[1]))))
        return
    training, embedded = [], []
    for count in args.cohorts:
        for name in args.models:
            with console.status(f"{name}, {count} clients: plain loop and batched ..."):
                training.append(fresh("--row", name, str(count)))
    print_table("local training of one cohort", [
        "model", "P", "clients", "records", "plain s", "batched s", "plain clients/s",
        "batched clients/s", "batched ÷ plain", "max |Δθ|"],
        [[r["model"], r["parameters"], r["clients"], r["records"], r["plain_s"],
          r["batched_s"], r["plain_clients_per_s"], r["batched_clients_per_s"],
          f"{r['speedup']:.1f}×", f"{r['max_abs_diff']:.1e}"] for r in training])
    if args.embedded:
        for count in args.cohorts:
            with console.status(f"embedded rounds, {count} clients, batched off and auto ..."):
                embedded.append(embedded_row("logreg", MODELS["logreg"], count))
        print_table("whole embedded round (logreg)", [
            "clients", "off s/round", "auto s/round", "off ÷ auto"],
            [[r["clients"], r["off_round_s"], r["auto_round_s"], f"{r['speedup']:.2f}×"]
             for r in embedded])
    with console.status(f"a {args.population:,}-client population ..."):
        memory = memory_row(args.population, args.population_cohort)
    console.print(
        f"{memory['clients']:,}-client population: built in {memory['build_s']:.1f} s, "
        f"peak RSS {memory['peak_rss'] / 2**30:.2f} GiB after training a "
        f"{memory['cohort']:,}-client cohort ({memory['floor_rss'] / 2**20:.0f} MiB of it "
        f"the interpreter and torch); its records materialised whole: "
        f"{memory['eager_records_bytes'] / 2**30:.1f} GiB")
    for r in training:
        console.print(f"{r['model']} × {r['clients']}: batched ÷ plain = {r['speedup']:.1f}×")
    path = write_results("scale_embedded", {"training": training, "embedded": embedded,
                                            "memory": memory})
    plot(training, path.with_suffix(".png"))
    console.print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
