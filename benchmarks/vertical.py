"""Vertical FL: PSI speed and bytes, and vertical training accuracy against centralised
training, in one run.

- **PSI**: :mod:`tsfl.vertical.psi` (ECDH over edwards25519's prime-order subgroup,
  receiver = the smaller set, 12-byte tags for the sender's set) against the OpenMined
  PSI library (``openmined-psi``: ECDH over P-256, the server's set as a Golomb-compressed
  set, GCS, false-positive rate 1e-9) when it is installed, and a plain salted-hash
  intersection (SHA-256; *not private* — the floor). Each side's work is timed together
  on one thread (our ``--workers`` spreads scalar multiplications over threads).
- **Accuracy**: ``examples/vertical-breast-cancer.yaml`` (vertical LR, and split NN)
  through ``tsfl.run`` against scikit-learn's ``LogisticRegression`` on the same
  intersection and the same train/test rows; the accuracy–ε curve with cut-layer DP.

Run: ``python -m benchmarks.vertical [--psi 10000:10000 2000:50000] [--workers 1]
[--epochs N] [--eps-z 0.5 1 2 4] [--psi-only]``; the targets of issue #22 are
``--psi 100000:100000 10000:1000000 --workers 2 --psi-only``. Writes
``results/vertical.json`` and ``results/vertical.png`` (``--psi-only``:
``results/vertical_psi.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from typing import Any

import numpy as np

from benchmarks._common import RESULTS, console, print_table, write_results
from tsfl.vertical.psi import PsiConfig, PsiReceiver, PsiSender, session_id


def _sets(n_small: int, n_large: int) -> tuple[list[str], list[str], int]:
    """The small set overlaps the large one by half of its ids."""
    small = [f"s{i}" for i in range(n_small)]
    large = [f"s{i}" for i in range(0, n_small, 2)] + [
        f"l{i}" for i in range(n_large - (n_small + 1) // 2)]
    return small, large, (n_small + 1) // 2


def ours(small: list[str], large: list[str], workers: int) -> dict[str, Any]:
    salt = os.urandom(32)
    cfg = PsiConfig(salt, session_id(salt, "a", "b"), workers=workers,
                    max_receiver_items=len(small), max_sender_items=len(large))
    t0 = time.perf_counter()
    r, s = PsiReceiver(small, cfg), PsiSender(large, cfg)
    req = r.request()
    resp = s.handle_request(req)
    found = r.handle_response(resp)
    res = r.result()
    s.handle_result(res)
    wall = time.perf_counter() - t0
    total = len(req) + len(resp) + len(res)
    return {"s": wall, "bytes": total, "found": len(found)}


def openmined(small: list[str], large: list[str]) -> dict[str, Any] | None:
    try:
        import private_set_intersection.python as psi
    except ImportError:
        return None
    t0 = time.perf_counter()
    client = psi.client.CreateWithNewKey(True)
    server = psi.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(1e-9, len(small), large, psi.DataStructure.GCS)
    request = client.CreateRequest(small)
    response = server.ProcessRequest(request)
    found = client.GetIntersection(setup, response)
    wall = time.perf_counter() - t0
    total = sum(len(m.SerializeToString()) for m in (setup, request, response))
    return {"s": wall, "bytes": total, "found": len(found)}


def plain(small: list[str], large: list[str]) -> dict[str, Any]:
    salt = os.urandom(32)
    t0 = time.perf_counter()
    ha = {hashlib.sha256(salt + i.encode()).digest(): i for i in small}
    hb = {hashlib.sha256(salt + i.encode()).digest() for i in large}
    found = [ha[h] for h in ha.keys() & hb]
    return {"s": time.perf_counter() - t0, "bytes": 32 * (len(small) + len(large)),
            "found": len(found)}


def bench_psi(sizes: list[tuple[int, int]], workers: int) -> list[dict[str, Any]]:
    rows = []
    for n_small, n_large in sizes:
        small, large, expected = _sets(n_small, n_large)
        row: dict[str, Any] = {"small": n_small, "large": n_large, "expected": expected,
                               "tsfl": ours(small, large, workers),
                               "openmined": openmined(small, large),
                               "plain_hash": plain(small, large)}
        for k in ("tsfl", "openmined", "plain_hash"):
            if row[k] is not None:
                assert row[k]["found"] == expected, (k, row[k]["found"], expected)
                row[k]["bytes_per_id"] = row[k]["bytes"] / (n_small + n_large)
        if row["openmined"]:
            row["time_vs_openmined"] = row["tsfl"]["s"] / row["openmined"]["s"]
            row["bytes_vs_openmined"] = row["tsfl"]["bytes"] / row["openmined"]["bytes"]
        row["time_vs_plain"] = row["tsfl"]["s"] / row["plain_hash"]["s"]
        rows.append(row)
    return rows


def _central(spec: Any, c: float = 1.0) -> float:
    """scikit-learn LR on the concatenated columns of the true intersection, the same
    train/test rows as the vertical run."""
    from sklearn.linear_model import LogisticRegression

    from tsfl.sim.vertical import vertical_tables

    tables = vertical_tables(spec)
    common = set.intersection(*(set(t.ids) for t in tables.parties.values()))
    order = sorted(common)
    cols, y = [], None
    for t in tables.parties.values():
        where = {i: r for r, i in enumerate(t.ids)}
        rows = [where[i] for i in order]
        if t.x.shape[1]:
            cols.append(t.x[rows])
        if t.y is not None:
            y = t.y[rows]
    x = np.concatenate(cols, axis=1)
    test = np.array([i in tables.test_ids for i in order])
    assert y is not None
    lr = LogisticRegression(C=c, max_iter=5000).fit(x[~test], y[~test])
    return float(lr.score(x[test], y[test]))


def bench_accuracy(epochs: int | None, zs: list[float]) -> dict[str, Any]:
    import tsfl
    from tsfl.config import bundled_example, load_job

    spec = load_job(bundled_example("vertical-breast-cancer"),
                    {"rounds": epochs} if epochs else {})
    central = _central(spec)
    wd = spec.training.weight_decay
    matched = _central(spec, 1.0 / (wd * 365)) if wd else central  # the same L2 penalty
    out: dict[str, Any] = {"central_logreg": central, "central_logreg_same_l2": matched,
                           "runs": {}}
    nn = {"rounds": 30, "training": {"lr": 0.01, "batch_size": 32}}  # split NN: 30 epochs
    for label, extra, more in (("vertical_logreg", {}, {}),
                               ("split_nn", {"model": "split_nn"}, nn)):
        res = tsfl.run(spec, vertical=extra, **more)
        m = res.metrics
        out["runs"][label] = {
            "accuracy": res.final_accuracy, "vs_central": res.final_accuracy - central,
            "vs_central_same_l2": res.final_accuracy - matched,
            "bytes_per_epoch": (m[-1]["bytes_up"] + m[-1]["bytes_down"]),
            "time_per_epoch_s": res.summary["wall_s"] / len(m),
            "psi_s": res.summary["vertical"]["psi"]["wall_s"]}
    curve = []
    for z in zs:
        res = tsfl.run(spec, vertical={"model": "split_nn",
                                       "cut_dp": {"noise_multiplier": z, "clip": 1.0}}, **nn)
        curve.append({"noise_multiplier": z, "epsilon": res.metrics[-1]["epsilon"],
                      "accuracy": res.final_accuracy})
    out["cut_dp_curve"] = curve
    return out


def plot(data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    rows = data["psi"]
    labels = [f"{r['small']}×{r['large']}" for r in rows]
    xs = np.arange(len(rows))
    for i, k in enumerate(("tsfl", "openmined", "plain_hash")):
        vals = [r[k]["s"] if r[k] else 0 for r in rows]
        a.bar(xs + (i - 1) * 0.27, vals, 0.27, label=k)
    a.set_xticks(xs, labels)
    a.set_yscale("log")
    a.set_ylabel("seconds (both sides)")
    a.set_title("PSI time")
    a.legend()
    acc = data["accuracy"]
    curve = acc["cut_dp_curve"]
    b.plot([c["epsilon"] for c in curve], [c["accuracy"] for c in curve], "o-",
           label="split NN + cut-layer DP")
    b.axhline(acc["central_logreg"], color="k", ls="--", label="central LR (sklearn)")
    b.axhline(acc["runs"]["split_nn"]["accuracy"], color="g", ls=":",
              label="split NN, no DP")
    b.set_xscale("log")
    b.set_xlabel("ε (δ = 1e-5)")
    b.set_ylabel("test accuracy")
    b.set_title("breast_cancer, 3 feature parties")
    b.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "vertical.png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--psi", nargs="+", default=["10000:10000", "2000:50000"],
                    help="SMALL:LARGE set sizes")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--epochs", type=int, help="default: the example's rounds (100)")
    ap.add_argument("--eps-z", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    ap.add_argument("--psi-only", action="store_true",
                    help="PSI rows only, into results/vertical_psi.json")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.psi]
    data: dict[str, Any] = {"workers": args.workers,
                            "psi": bench_psi(sizes, args.workers)}  # type: ignore[arg-type]
    if not args.psi_only:
        data["accuracy"] = bench_accuracy(args.epochs, args.eps_z)
    print_table("PSI (seconds, bytes per id)",
                ["sets", "tsfl s", "openmined s", "plain s", "tsfl B/id", "openmined B/id",
                 "time vs openmined", "bytes vs openmined"],
                [[f"{r['small']}×{r['large']}", r["tsfl"]["s"],
                  r["openmined"]["s"] if r["openmined"] else "-", r["plain_hash"]["s"],
                  r["tsfl"]["bytes_per_id"],
                  r["openmined"]["bytes_per_id"] if r["openmined"] else "-",
                  r.get("time_vs_openmined", "-"), r.get("bytes_vs_openmined", "-")]
                 for r in data["psi"]])
    if args.psi_only:
        console.print(f"wrote {write_results('vertical_psi', data)}")
        return
    acc = data["accuracy"]
    print_table(f"accuracy (central LR {acc['central_logreg']:.4f}, same L2 "
                f"{acc['central_logreg_same_l2']:.4f})",
                ["run", "accuracy", "vs central", "bytes/epoch", "s/epoch"],
                [[k, v["accuracy"], v["vs_central"], v["bytes_per_epoch"],
                  v["time_per_epoch_s"]] for k, v in acc["runs"].items()])
    print_table("split NN with cut-layer DP", ["z", "ε", "accuracy"],
                [[c["noise_multiplier"], c["epsilon"], c["accuracy"]]
                 for c in acc["cut_dp_curve"]])
    path = write_results("vertical", data)
    plot(data)
    console.print(f"wrote {path} and {RESULTS / 'vertical.png'}")


if __name__ == "__main__":
    main()
