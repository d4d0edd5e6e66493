"""SecAgg+: client and server time per round and bytes, for {100, 1000} clients ×
100k parameters with 0%, 10% and 30% dropouts — next to Flower's SecAgg+ workflow on the
same workload, in one process.

- **tsfl**: :mod:`tsfl.secagg` — X25519 + HKDF + AES-GCM for the routed shares, Shamir
  over GF(2^521 − 1), ChaCha20 masks, a Harary neighbour graph of O(log n) degree, the
  ring sized so the sum cannot wrap. The stages run as the coordinator runs them, every
  client in turn, timed apart from the server's work.
- **Flower** (``flwr`` 1.42): ``SecAggPlusWorkflow`` (server) and ``secaggplus_mod``
  (client), unchanged, over an in-memory grid that hands each message to the client mod;
  its neighbourhood size and threshold set to ours. Dropped clients stop answering
  before their masked vector, the same clients for both (see :func:`drops_for`).

Both sum the same inputs; the benchmark checks each against the plaintext sum (tsfl:
exactly, on the quantized codes; Flower: within its quantization). Run:
``python -m benchmarks.secagg [--clients 100 1000] [--dropouts 0 0.1 0.3] [--flower-max
100]``; writes ``results/secagg.json`` and ``results/secagg.png``.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import RESULTS, console, print_table, write_results
from tsfl.secagg.protocol import RoundConfig, SecAggClient, SecAggServer
from tsfl.secagg.ring import RingSpec, dequantize_sum, quantize

STAGES = ("advertise", "share", "masked", "unmask")
SIZE = 100_000


def drops_for(n: int, fraction: float, seed: int = 7) -> dict[int, str]:
    """client index → the stage it vanishes before (the same for both contenders).

    Clients vanish before sending their masked vector: the costly case for the server
    (it rebuilds their pairwise-mask keys from Shamir shares). Earlier dropouts are not
    compared: Flower 1.42's workflow still names a client that vanished before sharing
    keys as dead in the unmask stage, and its neighbours fail looking up shares they
    never got (``KeyError`` in ``secaggplus_mod._unmask``); tsfl's tests cover dropouts
    at every stage.
    """
    rng = np.random.default_rng([seed, n, int(fraction * 1000)])
    chosen = rng.choice(n, size=round(fraction * n), replace=False)
    return {int(c): "masked" for c in chosen}


def tsfl_round(inputs: list[np.ndarray], drops: dict[int, str]) -> dict[str, Any]:
    n = len(inputs)
    names = [f"c{i:05d}" for i in range(n)]
    ring = RingSpec(8.0, 22, n)
    config = RoundConfig.build(os.urandom(16), names, ring, inputs[0].size, 1)
    server = SecAggServer(config)
    clients = {c: SecAggClient(c, config) for c in names}
    gone: set[str] = set()
    t_client = t_server = 0.0
    sent = 0

    def alive(stage: str) -> list[str]:
        gone.update(names[i] for i, s in drops.items() if s == stage)
        return [c for c in names if c not in gone]

    def clock(fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        return out, time.perf_counter() - t0

    for c in alive("advertise"):
        keys, dt = clock(clients[c].advertise)
        t_client += dt
        _, dt = clock(server.receive_keys, c, *keys)
        t_server += dt
        sent += 64
    for c in alive("share"):
        sealed, dt = clock(clients[c].share_keys, dict(server.public_keys))
        t_client += dt
        sent += sum(len(b) for b in sealed.values())
        _, dt = clock(server.receive_shares, c, sealed)
        t_server += dt
    width = (ring.ring_bits + 7) // 8
    codes = {}
    for c in alive("masked"):
        i = names.index(c)
        shares, dt0 = clock(server.shares_for, c)
        y, dt = clock(clients[c].masked_input, inputs[i], shares,
                      np.random.default_rng([i, 0x5EC]))
        t_client += dt
        t_server += dt0
        codes[c] = quantize(inputs[i], ring, np.random.default_rng([i, 0x5EC]))
        sent += y.size * width
        _, dt = clock(server.receive_masked, c, y)
        t_server += dt
    (survivors, dropped), dt = clock(server.unmask_request)
    t_server += dt
    for c in alive("unmask"):
        if c in survivors:
            resp, dt = clock(clients[c].unmask, survivors, dropped)
            t_client += dt
            sent += 67 * len(resp)
            _, dt = clock(server.receive_unmask, c, resp)
            t_server += dt
    (total, who), dt = clock(server.result)
    t_server += dt
    exact = bool(np.array_equal(total, np.sum([codes[c] for c in who], axis=0,
                                              dtype=np.uint64) & ring.mask))
    got = dequantize_sum(total, len(who), ring)
    ref = np.sum([inputs[names.index(c)] for c in who], axis=0)
    return {"client_s": t_client / n, "server_s": t_server, "total_s": t_client + t_server,
            "bytes_per_client": sent / n, "survivors": len(who), "exact": exact,
            "max_abs_error": float(np.abs(got - ref).max()),
            "neighbours": config.neighbours, "threshold": config.threshold}


def flower_round(inputs: list[np.ndarray], drops: dict[int, str], neighbours: int,
                 threshold: int) -> dict[str, Any]:
    import flwr.compat.common.recorddict_compat as compat
    from flwr.client.mod.secure_aggregation.secaggplus_mod import secaggplus_mod
    from flwr.common import (
        ConfigRecord,
        Context,
        FitRes,
        Message,
        RecordDict,
        Status,
        ndarrays_to_parameters,
        parameters_to_ndarrays,
    )
    from flwr.common.secure_aggregation.secaggplus_constants import (
        RECORD_KEY_CONFIGS,
        Stage,
    )
    from flwr.common.typing import Code
    from flwr.server import ServerConfig
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import (
        SecAggPlusWorkflow,
    )
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    n = len(inputs)
    stage_of = {Stage.SETUP: "advertise", Stage.SHARE_KEYS: "share",
                Stage.COLLECT_MASKED_VECTORS: "masked", Stage.UNMASK: "unmask"}

    class Proxy(ClientProxy):
        def get_properties(self, *a, **k): raise NotImplementedError
        def get_parameters(self, *a, **k): raise NotImplementedError
        def fit(self, *a, **k): raise NotImplementedError
        def evaluate(self, *a, **k): raise NotImplementedError
        def reconnect(self, *a, **k): raise NotImplementedError

    node_ids = list(range(1, n + 1))
    contexts = {nid: Context(run_id=1, node_id=nid, node_config={}, state=RecordDict(),
                             run_config={}) for nid in node_ids}
    timers = {"client": 0.0}
    gone: set[int] = set()

    def fit(msg: Message, ctxt: Context) -> Message:
        i = ctxt.node_id - 1
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([inputs[i]]), 1, {})
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)

    class Grid:
        def send_and_receive(self, messages, timeout=None):
            out = []
            for msg in messages:
                nid = msg.metadata.dst_node_id
                stage = stage_of[msg.content.config_records[RECORD_KEY_CONFIGS]["stage"]]
                if drops.get(nid - 1) == stage:
                    gone.add(nid)
                if nid in gone:
                    continue
                t0 = time.perf_counter()
                # a real grid serializes each message; the mod pops keys from its copy
                out.append(secaggplus_mod(copy.deepcopy(msg), contexts[nid], fit))
                timers["client"] += time.perf_counter() - t0
            return out

    manager = SimpleClientManager()
    for nid in node_ids:
        manager.register(Proxy(str(nid)))
    for proxy in manager.all().values():
        proxy.node_id = int(proxy.cid)
    strategy = FedAvg(fraction_fit=1.0, min_fit_clients=n, min_available_clients=n)
    base = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    ctx = LegacyContext(base, ServerConfig(num_rounds=1), strategy, manager)
    ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: 1})
    ctx.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([np.zeros(inputs[0].size, np.float32)]), True)
    workflow = SecAggPlusWorkflow(num_shares=neighbours + 1,
                                  reconstruction_threshold=threshold, clipping_range=8.0,
                                  quantization_range=1 << 22, modulus_range=1 << 32)
    t0 = time.perf_counter()
    workflow(Grid(), ctx)
    total = time.perf_counter() - t0
    params = compat.arrayrecord_to_parameters(ctx.state.array_records[MAIN_PARAMS_RECORD],
                                              keep_input=True)
    got = parameters_to_ndarrays(params)[0]
    survivors = [nid - 1 for nid in node_ids if nid not in gone]
    ref = np.mean([inputs[i] for i in survivors], axis=0)  # FedAvg, equal weights
    return {"client_s": timers["client"] / n, "server_s": total - timers["client"],
            "total_s": total, "survivors": len(survivors),
            "max_abs_error_mean": float(np.abs(got - ref).max())}


def bench(clients: list[int], dropouts: list[float], flower_max: int) -> dict[str, Any]:
    warm = [np.zeros(1000, np.float32) for _ in range(8)]
    tsfl_round(warm, {})  # imports, caches
    rows = []
    for n in clients:
        rng = np.random.default_rng(n)
        inputs = [rng.normal(0, 0.5, SIZE).astype(np.float32) for _ in range(n)]
        for d in dropouts:
            drops = drops_for(n, d)
            console.print(f"[bold]{n} clients × {SIZE:,}, {d:.0%} dropouts")
            row: dict[str, Any] = {"clients": n, "dropout": d,
                                   "tsfl": tsfl_round(inputs, drops)}
            if n <= flower_max:
                row["flower"] = flower_round(inputs, drops, row["tsfl"]["neighbours"],
                                             row["tsfl"]["threshold"])
                row["flower_vs_tsfl"] = row["flower"]["total_s"] / row["tsfl"]["total_s"]
            rows.append(row)
    return {"size": SIZE, "rows": rows}


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels = [f"{r['clients']}\n{r['dropout']:.0%}" for r in data["rows"]]
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [r["tsfl"]["total_s"] for r in data["rows"]], 0.4, label="tsfl")
    ax.bar(x + 0.2, [r["flower"]["total_s"] if "flower" in r else 0 for r in data["rows"]],
           0.4, label="Flower SecAgg+")
    ax.set_xticks(x, labels)
    ax.set_ylabel("one round, all clients + server (s)")
    ax.set_yscale("log")
    ax.set_title(f"SecAgg+, {data['size']:,} parameters (clients / dropouts)")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    ap.add_argument("--flower-max", type=int, default=100,
                    help="run Flower up to this many clients (~0.5 s per client and round "
                         "at 100k parameters)")
    args = ap.parse_args()
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)
    data = bench(args.clients, args.dropouts, args.flower_max)
    rows = []
    for r in data["rows"]:
        t, f = r["tsfl"], r.get("flower")
        rows.append([r["clients"], f"{r['dropout']:.0%}", t["client_s"] * 1e3, t["server_s"],
                     t["total_s"], f["total_s"] if f else float("nan"),
                     r.get("flower_vs_tsfl", float("nan")), t["bytes_per_client"] / 1e3,
                     str(t["exact"])])
    print_table(f"SecAgg+ round, {SIZE:,} parameters",
                ["clients", "dropouts", "tsfl client ms", "tsfl server s", "tsfl total s",
                 "Flower total s", "Flower ÷ tsfl", "tsfl kB/client", "exact"], rows)
    path = write_results("secagg", data)
    plot(data, RESULTS / "secagg.png")
    console.print(f"wrote {path} and {RESULTS / 'secagg.png'}")


if __name__ == "__main__":
    main()
