"""SecAgg+ against an active server: client and server time per round and bytes, at
100 clients × 100k parameters with 0%, 10% and 30% dropouts and 1,000 clients with 10% —
next to Flower's SecAgg+ workflow on the same workload, in one process; the per-client
cost of the post-quantum key agreement; and, with ``--baseline DIR``, the same rounds of
an earlier checkout (the semi-honest protocol before issue #17).

- **tsfl**: :mod:`tsfl.secagg` — every advertisement signed (Ed25519) and checked by
  every device against its own trusted authority, (k, t) derived from γ = 0.05, δ and
  σ = 40 (Bell et al. 2020), a consistency round before unmasking, n and the training
  loss inside the masked vector; X25519 + HKDF + AES-GCM for the routed shares (or hybrid
  X25519 + ML-KEM-768), Shamir over GF(2^521 − 1), ChaCha20 masks, the ring sized so the
  sum cannot wrap. The stages run as the coordinator runs them, every client in turn,
  timed apart from the server's work; each client has its own certificate cache (a
  first round: every certificate is checked).
- **Flower** (``flwr`` 1.42): ``SecAggPlusWorkflow`` (server) and ``secaggplus_mod``
  (client), unchanged, over an in-memory grid that hands each message to the client mod;
  its neighbourhood size and threshold set to ours. Dropped clients stop answering
  before their masked vector, the same clients for both (see :func:`drops_for`).

Both sum the same inputs; the benchmark checks each against the plaintext sum (tsfl:
exactly, on the quantized codes; Flower: within its quantization). Run:
``python -m benchmarks.secagg [--rows 100:0 100:0.1 100:0.3 1000:0.1] [--flower-max 100]
[--hybrid-max 100] [--repeats 3] [--baseline DIR]`` (DIR: e.g. ``git worktree add DIR
b506a4e``); writes ``results/secagg.json`` and ``results/secagg.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import RESULTS, console, print_table, write_results
from tsfl.identity import DeviceIdentity, IdentityAuthority
from tsfl.secagg import keys
from tsfl.secagg.advert import Trust
from tsfl.secagg.client import SecAggClient
from tsfl.secagg.extras import Extras
from tsfl.secagg.ring import RingSpec, dequantize_sum, quantize
from tsfl.secagg.round import RoundConfig
from tsfl.secagg.server import SecAggServer

STAGES = ("advertise", "share", "masked", "consistency", "unmask")
SIZE = 100_000
CORRUPTION = 0.05


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


def _inputs(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.normal(0, 0.5, SIZE).astype(np.float32) for _ in range(n)]


def tsfl_round(inputs: list[np.ndarray], drops: dict[int, str], agreement: str = "x25519",
               dropout: float = 0.1, first: bool = False) -> dict[str, Any]:
    """One round; ``first``: as a job's first round, every device checking every
    certificate; otherwise a later round's (certificates cached from an earlier one,
    every advertisement's signature still checked)."""
    n = len(inputs)
    names = [f"c{i:05d}" for i in range(n)]
    ring = RingSpec(8.0, 22, n)
    extras = Extras(ring.quant_bits)
    config = RoundConfig.build(os.urandom(16), names, ring, inputs[0].size + extras.width,
                               corruption=CORRUPTION, dropout=dropout,
                               key_agreement=agreement)  # type: ignore[arg-type]
    ca = IdentityAuthority.generate()
    identities = {c: DeviceIdentity.enrol(c, ca) for c in names}  # before the round
    server = SecAggServer(config)
    clients = {c: SecAggClient(c, config, identities[c], Trust([ca.public_key]))
               for c in names}
    if not first:  # an earlier round checked the cohort's certificates (untimed)
        for cl in clients.values():
            for c, ident in identities.items():
                cl.trust.check(ident.certificate, c)
    gone: set[str] = set()
    t_client = dict.fromkeys(STAGES, 0.0)
    t_server = 0.0
    sent = 0

    def alive(stage: str) -> list[str]:
        gone.update(names[i] for i, s in drops.items() if s == stage)
        return [c for c in names if c not in gone]

    def clock(fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        return out, time.perf_counter() - t0

    for c in alive("advertise"):
        ad, dt = clock(clients[c].advertise)
        t_client["advertise"] += dt
        _, dt = clock(server.receive_advert, c, ad)
        t_server += dt
        sent += sum(len(v) for v in ad.values() if isinstance(v, bytes)) + 128
    _, dt = clock(server.close_adverts)
    t_server += dt
    for c in alive("share"):
        routed, dt0 = clock(server.adverts_for, c)
        sealed, dt = clock(clients[c].share_keys, routed["ads"], routed["eks"])
        t_client["share"] += dt
        sent += sum(len(b) for b in sealed.values())
        _, dt1 = clock(server.receive_shares, c, sealed)
        t_server += dt0 + dt1
    width = (ring.ring_bits + 7) // 8
    expected = np.zeros(config.size, np.uint64)
    for c in alive("masked"):
        i = names.index(c)
        shares, dt0 = clock(server.shares_for, c)
        t0 = time.perf_counter()
        codes = np.concatenate([quantize(inputs[i], ring, np.random.default_rng([i, 0x5EC])),
                                extras.encode(100, {"train_loss": 1.0})])
        y = clients[c].masked_input(codes, shares)
        t_client["masked"] += time.perf_counter() - t0
        expected += codes
        sent += y.size * width
        _, dt1 = clock(server.receive_masked, c, y)
        t_server += dt0 + dt1
    survivors, dt = clock(server.unmask_request)
    t_server += dt
    for c in alive("consistency"):
        sig, dt = clock(clients[c].consistency, survivors)
        t_client["consistency"] += dt
        sent += 64
        _, dt = clock(server.receive_signature, c, sig)
        t_server += dt
    _, dt = clock(server.close_consistency)
    t_server += dt
    for c in alive("unmask"):
        sigs, dt0 = clock(server.signatures_for, c)
        resp, dt = clock(clients[c].unmask, sigs)
        t_client["unmask"] += dt
        sent += 67 * len(resp)
        _, dt1 = clock(server.receive_unmask, c, resp)
        t_server += dt0 + dt1
    (total, who), dt = clock(server.result)
    t_server += dt
    exact = bool(np.array_equal(total, expected & ring.mask))
    size = inputs[0].size
    got = dequantize_sum(total[:size], len(who), ring)
    ref = np.sum([inputs[names.index(c)] for c in who], axis=0)
    examples, _ = extras.decode_sum(total[size:])
    client_total = sum(t_client.values())
    return {"client_s": client_total / n, "client_stage_s": {s: v / n for s, v in
                                                             t_client.items()},
            "server_s": t_server, "total_s": client_total + t_server,
            "bytes_per_client": sent / n, "survivors": len(who),
            "exact": exact and examples == 100 * len(who),
            "max_abs_error": float(np.abs(got - ref).max()),
            "neighbours": config.neighbours, "threshold": config.threshold,
            "key_agreement": agreement, "first_round": first}


def _key_agreement_once(k: int, hybrid: bool, peers: list[bytes], peer_eks: list[bytes],
                        incoming: list[bytes]) -> float:
    t0 = time.perf_counter()
    sk = keys.private_key(keys.new_keypair()[0])
    dk = keys.new_kem_keypair()[0] if hybrid else None
    for j in range(k):
        x = keys.exchange(sk, peers[j])
        ss, ct = keys.encapsulate(peer_eks[j]) if hybrid else (b"", b"")
        keys.channel_key(x, ss, ct, b"r" * 16, "u", f"v{j}")
        ss_in = keys.decapsulate(dk, incoming[j]) if dk is not None else b""
        keys.channel_key(x, ss_in, incoming[j] if hybrid else b"", b"r" * 16, f"v{j}", "u")
    return time.perf_counter() - t0


def key_agreement_cost(k: int, repeats: int = 21) -> list[dict[str, Any]]:
    """One client's share-channel key agreement with k neighbours, X25519 alone and
    hybrid (median of ``repeats``, the two interleaved): its key pair(s), then per
    neighbour the X25519 exchange, the KEM encapsulation (hybrid) and the sealing key,
    and per received share the decapsulation (hybrid) and the opening key. Bytes: what
    the hybrid mode adds to the advertisement and to the k sealed shares."""
    peers = [keys.new_keypair()[1] for _ in range(k)]
    peer_eks = [keys.new_kem_keypair()[1] for _ in range(k)]
    incoming = [keys.encapsulate(keys.new_kem_keypair()[1])[1] for _ in range(k)]
    times: dict[str, list[float]] = {a: [] for a in keys.KEY_AGREEMENTS}
    for _ in range(repeats):
        for a in keys.KEY_AGREEMENTS:
            times[a].append(_key_agreement_once(k, a != "x25519", peers, peer_eks, incoming))
    return [{"k": k, "key_agreement": a, "client_ms": float(np.median(times[a])) * 1e3,
             "extra_bytes": (keys.EK_BYTES + 32 + k * keys.KEM_CT_BYTES)
             if a != "x25519" else 0} for a in keys.KEY_AGREEMENTS]


def baseline_round(checkout: Path, n: int, fraction: float) -> dict[str, Any]:
    """The same round with an earlier checkout's ``benchmarks.secagg.tsfl_round`` (run
    in a subprocess against that checkout's ``tsfl``; same inputs, same dropouts)."""
    script = (
        "import json, sys; import numpy as np\n"
        f"sys.path[:0] = [{str(checkout)!r}, {str(checkout / 'libs')!r}]\n"
        "from benchmarks.secagg import tsfl_round, drops_for, SIZE\n"
        f"rng = np.random.default_rng({n})\n"
        f"inputs = [rng.normal(0, 0.5, SIZE).astype(np.float32) for _ in range({n})]\n"
        "tsfl_round([np.zeros(1000, np.float32) for _ in range(8)], {})\n"
        f"print(json.dumps(tsfl_round(inputs, drops_for({n}, {fraction}))))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=checkout, check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ""}).stdout
    return json.loads(out.strip().splitlines()[-1])


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


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median total time, with every run's total beside it."""
    ordered = sorted(runs, key=lambda r: r["total_s"])
    return {**ordered[(len(ordered) - 1) // 2], "totals_s": [r["total_s"] for r in runs]}


def bench(rows: list[tuple[int, float]], flower_max: int, hybrid_max: int,
          baseline: Path | None, repeats: int, repeat_max: int) -> dict[str, Any]:
    warm = [np.zeros(1000, np.float32) for _ in range(20)]
    tsfl_round(warm, {})  # imports, caches
    out = []
    for n in sorted({n for n, _ in rows}):
        inputs = _inputs(n)
        for d in sorted(d for m, d in rows if m == n):
            drops = drops_for(n, d)
            delta = max(0.1, d)  # the threat model must admit the dropouts
            console.print(f"[bold]{n} clients × {SIZE:,}, {d:.0%} dropouts (δ = {delta})")
            runs: dict[str, list[dict[str, Any]]] = {"tsfl": [], "tsfl_first": [],
                                                     "hybrid": [], "baseline": []}
            for _ in range(repeats if n <= repeat_max else 1):  # alternating contenders
                runs["tsfl"].append(tsfl_round(inputs, drops, dropout=delta))
                runs["tsfl_first"].append(tsfl_round(inputs, drops, dropout=delta,
                                                     first=True))
                if n <= hybrid_max:
                    runs["hybrid"].append(tsfl_round(inputs, drops, "x25519+mlkem768",
                                                     delta))
                if baseline is not None:
                    runs["baseline"].append(baseline_round(baseline, n, d))
            row: dict[str, Any] = {"clients": n, "dropout": d, "delta": delta,
                                   **{k: _median_run(v) for k, v in runs.items() if v}}
            if baseline is not None:
                row["tsfl_vs_baseline"] = row["tsfl"]["total_s"] / row["baseline"]["total_s"]
                row["first_vs_baseline"] = (row["tsfl_first"]["total_s"]
                                            / row["baseline"]["total_s"])
            if "hybrid" in row:
                row["hybrid_vs_tsfl"] = row["hybrid"]["total_s"] / row["tsfl"]["total_s"]
            if n <= flower_max:
                row["flower"] = flower_round(inputs, drops, row["tsfl"]["neighbours"],
                                             row["tsfl"]["threshold"])
                row["flower_vs_tsfl"] = row["flower"]["total_s"] / row["tsfl"]["total_s"]
            out.append(row)
            console.print({k: v for k, v in row.items() if "_vs_" in k})
        del inputs
    agreement = [a for k in sorted({r["tsfl"]["neighbours"] for r in out})
                 for a in key_agreement_cost(k)]
    return {"size": SIZE, "corruption": CORRUPTION, "security_bits": 40, "repeats": repeats,
            "rows": out, "key_agreement": agreement}


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    rows = data["rows"]
    labels = [f"{r['clients']}\n{r['dropout']:.0%}" for r in rows]
    x = np.arange(len(labels))
    series = [("tsfl (active)", lambda r: r["tsfl"]["total_s"]),
              ("tsfl, before (semi-honest)", lambda r: r.get("baseline", {}).get("total_s", 0)),
              ("Flower SecAgg+", lambda r: r.get("flower", {}).get("total_s", 0))]
    width = 0.8 / len(series)
    for j, (name, get) in enumerate(series):
        ax.bar(x + (j - 1) * width, [get(r) for r in rows], width, label=name)
    ax.set_xticks(x, labels)
    ax.set_ylabel("one round, all clients + server (s)")
    ax.set_yscale("log")
    ax.set_title(f"SecAgg+, {data['size']:,} parameters (clients / dropouts)")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rows(spec: list[str]) -> list[tuple[int, float]]:
    out = []
    for item in spec:
        n, _, d = item.partition(":")
        out.append((int(n), float(d or 0)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", nargs="+", default=["100:0", "100:0.1", "100:0.3", "1000:0.1"],
                    help="CLIENTS:DROPOUT pairs")
    ap.add_argument("--flower-max", type=int, default=100,
                    help="run Flower up to this many clients (~0.5 s per client and round "
                         "at 100k parameters)")
    ap.add_argument("--hybrid-max", type=int, default=100,
                    help="also run the hybrid X25519 + ML-KEM-768 rounds up to this many")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds per contender (alternating; the median is kept)")
    ap.add_argument("--repeat-max", type=int, default=100,
                    help="repeat rounds only up to this many clients")
    ap.add_argument("--key-agreement-only", action="store_true",
                    help="re-measure only the key-agreement rows of results/secagg.json")
    ap.add_argument("--baseline", type=Path,
                    help="an earlier checkout (e.g. git worktree of the commit before "
                         "issue #17) whose tsfl_round to time on the same rounds")
    args = ap.parse_args()
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)
    if args.key_agreement_only:
        data = json.loads((RESULTS / "secagg.json").read_text())
        data.pop("benchmark", None)
        data.pop("machine", None)
        data["key_agreement"] = [a for k in sorted({r["tsfl"]["neighbours"]
                                                   for r in data["rows"]})
                                 for a in key_agreement_cost(k)]
        path = write_results("secagg", data)
        console.print(data["key_agreement"])
        console.print(f"wrote {path}")
        return
    data = bench(_rows(args.rows), args.flower_max, args.hybrid_max, args.baseline,
                 args.repeats, args.repeat_max)
    rows = []
    for r in data["rows"]:
        t, f, b = r["tsfl"], r.get("flower"), r.get("baseline")
        rows.append([r["clients"], f"{r['dropout']:.0%}", f"{t['neighbours']}/{t['threshold']}",
                     t["client_s"] * 1e3, t["server_s"], t["total_s"],
                     r["tsfl_first"]["total_s"], b["total_s"] if b else float("nan"),
                     r.get("tsfl_vs_baseline", float("nan")),
                     r.get("first_vs_baseline", float("nan")),
                     r["hybrid"]["total_s"] if "hybrid" in r else float("nan"),
                     f["total_s"] if f else float("nan"),
                     r.get("flower_vs_tsfl", float("nan")), t["bytes_per_client"] / 1e3,
                     str(t["exact"] and r["tsfl_first"]["exact"]
                         and r.get("hybrid", t)["exact"])])
    print_table(f"SecAgg+ round, {SIZE:,} parameters",
                ["clients", "dropouts", "k/t", "client ms", "server s", "total s",
                 "first round s", "before s", "÷ before", "first ÷ before", "hybrid s",
                 "Flower s", "Flower ÷ tsfl", "kB/client", "exact"], rows)
    print_table("share-channel key agreement per client",
                ["k", "key agreement", "ms", "extra bytes"],
                [[a["k"], a["key_agreement"], a["client_ms"], a["extra_bytes"]]
                 for a in data["key_agreement"]])
    path = write_results("secagg", data)
    plot(data, RESULTS / "secagg.png")
    console.print(f"wrote {path} and {RESULTS / 'secagg.png'}")


if __name__ == "__main__":
    main()
