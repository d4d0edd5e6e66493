"""CKKS aggregation: client encrypt, server aggregate, client decrypt — times and bytes
for 10 clients × {100k, 1M} parameters, against the plaintext pipeline and TenSEAL.

Contenders, on the same weighted updates in one run:

- **plaintext**: the aggregator's own path — decode each float32 update frame and fold
  it into :class:`~tsfl.core.fold.RoundFold`.
- **tsfl HE**: :mod:`tsfl.he` — each client packs two reals per complex slot, encrypts
  ``w_k · x_k`` symmetrically (SEAL via TenSEAL's sealapi), and sends the raw
  polynomials; the he service widens them into a reused buffer and adds them in uint64,
  reducing mod q lazily (:meth:`~tsfl.he.SealedSum.add_section`); a client decrypts the
  sum.
- **tsfl HE, 10% selective**: the same on the 10% most sensitive coordinates (output
  layer first, for a model of one layer: the first 10%), the other 90% as float32.
- **TenSEAL recipe** (the seed's: ``CKKSVector``, N = 8192, [60, 40, 40], scale 2^40,
  the server computes Σ ct_k × w_k) — run at the sizes given by ``--tenseal``.
- **tsfl threshold** (:mod:`tsfl.he.threshold`, the default keying): 10 silos make a
  collective key (t = 6), each encrypts ``w_k · x_k`` under it and signs the section; the
  he service checks every section (residues, signature) and adds them; the opening: the
  sum check (a contributor's sketch of its own section and a decryptor's check of the
  sum, timed apart), t masked partial decryptions and one combination. ``decrypt`` is the
  opening's decryption work on one machine: t partial decryptions + the combination
  (``decrypt_all``: all 10 silos' partials); the ratios against the shared-key path
  (``he``, SEAL) are printed in the same run.

Run: ``python -m benchmarks.he [--sizes 100000 1000000] [--tenseal 100000]``; writes
``results/he.json`` and ``results/he.png``.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import RESULTS, console, print_table, write_results
from tsfl.core.fold import RoundFold
from tsfl.core.layout import ParamLayout
from tsfl.core.update import Update
from tsfl.he import (
    HeJob,
    SealedSum,
    SealedVector,
    SecretKeySet,
    choose_params,
    open_vector,
    seal_vector,
    select_coordinates,
)
from tsfl.he.signing import section_digest, sign_section, split_frame
from tsfl.he.threshold import (
    CeremonyParty,
    OpeningSilo,
    SectionSum,
    parse_sum,
    run_ceremony,
    scheme,
    sections,
)
from tsfl.he.threshold import choose_params as threshold_params
from tsfl.identity import DeviceIdentity, IdentityAuthority
from tsfl.wire.messages import decode_update, encode_update

CLIENTS = 10


def _clock(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def workload(p: int, seed: int = 0) -> tuple[list[np.ndarray], list[float]]:
    rng = np.random.default_rng(seed)
    xs = [rng.normal(0, 0.05, p).astype(np.float32) for _ in range(CLIENTS)]
    ws = [float(w) for w in rng.integers(50, 500, CLIENTS) / 100.0]  # n_k / weight_unit
    return xs, ws


def plaintext(p: int, xs: list[np.ndarray], ws: list[float]) -> dict[str, Any]:
    layout = ParamLayout([("w", (p,), "float32")])
    frames = [encode_update(Update("j", 1, f"c{i}", 0, 1, x, {}), layout)
              for i, x in enumerate(xs)]

    def aggregate() -> np.ndarray:
        fold = RoundFold(p)
        for i, f in enumerate(frames):
            u = decode_update(f, layout, verify_checksum=False, allow_nonfinite=True)
            fold.add(f"c{i}", u.delta, ws[i])
        return fold.close().mean

    best = min(_clock(aggregate)[1] for _ in range(3))
    return {"aggregate_s": best, "bytes_per_update": 4 * p}


def tsfl_he(p: int, xs: list[np.ndarray], ws: list[float], fraction: float | None
            ) -> dict[str, Any]:
    layout = ParamLayout([("w", (p,), "float32")])
    sel = select_coordinates(layout, fraction=fraction)
    clear = np.setdiff1d(np.arange(p), sel)
    params = choose_params(1e-6, 1e3, CLIENTS, size=int(sel.size))
    keys = SecretKeySet(params)
    pub = keys.public
    wires, clear_frames, enc_times = [], [], []
    clear_layout = ParamLayout([("w", (int(clear.size),), "float32")])
    for i, (x, w) in enumerate(zip(xs, ws, strict=True)):
        def encrypt(x: np.ndarray = x, w: float = w, i: int = i) -> tuple[bytes, bytes | None]:
            sealed = seal_vector(keys, x[sel].astype(np.float64) * w, w).to_bytes(pub.prime)
            frame = (encode_update(Update("j", 1, f"c{i}", 0, 1, x[clear], {}), clear_layout)
                     if clear.size else None)
            return sealed, frame
        (wire, frame), t = _clock(encrypt)
        wires.append(wire)
        clear_frames.append(frame)
        enc_times.append(t)

    def aggregate() -> tuple[SealedVector, np.ndarray | None]:
        acc = SealedSum(pub, int(sel.size))
        fold = RoundFold(int(clear.size)) if clear.size else None
        for i, wire in enumerate(wires):
            acc.add_section(wire)  # the he service's path (the edge checked q already)
            if fold is not None:
                u = decode_update(clear_frames[i], clear_layout, verify_checksum=False,
                                  allow_nonfinite=True)
                fold.add(f"c{i}", u.delta, ws[i])
        return acc.result(), fold.close().mean if fold is not None else None

    runs = [_clock(aggregate) for _ in range(3)]
    (total, clear_mean), agg_s = min(runs, key=lambda r: r[1])
    got, dec_s = _clock(lambda: open_vector(keys, total) / total.weight)
    ref = np.sum([x.astype(np.float64) * w for x, w in zip(xs, ws, strict=True)], axis=0)
    ref /= sum(ws)
    err = float(np.abs(got - ref[sel]).max())
    if clear_mean is not None:
        err = max(err, float(np.abs(clear_mean - ref[clear]).max()))
    wire_bytes = len(wires[0]) + (len(clear_frames[0]) if clear_frames[0] else 0)
    return {"encrypt_s": float(np.median(enc_times)), "aggregate_s": agg_s,
            "decrypt_s": dec_s, "bytes_per_update": wire_bytes,
            "expansion": wire_bytes / (4 * p), "encrypted": int(sel.size),
            "max_abs_error": err, "poly_degree": params.poly_degree,
            "prime_bits": params.prime_bits, "scale_bits": params.scale_bits}


def tsfl_threshold(p: int, xs: list[np.ndarray], ws: list[float]) -> dict[str, Any]:
    ca = IdentityAuthority.generate()
    ids = [f"silo-{i}" for i in range(CLIENTS)]
    idents = {i: DeviceIdentity.enrol(i, ca) for i in ids}
    params = threshold_params(1e-6, 1e3, CLIENTS, CLIENTS, CLIENTS // 2 + 1)
    (shares, _), keygen_s = _clock(lambda: run_ceremony([
        CeremonyParty(idents[i], params, "bench", ids, [ca.public_key]) for i in ids]))
    pub = shares[0].public
    silos = {s.device_id: OpeningSilo(s, idents[s.device_id]) for s in shares}
    job = HeJob(pub.job_key, np.arange(p), np.zeros(0, np.int64), 1.0, {}, (ca.public_key,))
    wires, enc_times = [], []
    for i, (x, w) in enumerate(zip(xs, ws, strict=True)):
        def encrypt(x: np.ndarray = x, w: float = w, i: int = i) -> tuple[bytes, np.ndarray]:
            polys = scheme.encrypt(params, pub.pk0, pub.a, x.astype(np.float64) * w)
            return sign_section(idents[ids[i]], sections.to_bytes(pub.key_id, p, w, polys),
                                "bench", 1), polys
        (wire, polys), t = _clock(encrypt)
        head, payload = split_frame(wire, 4096)
        silos[ids[i]].remember("bench", 1, section_digest(head, payload), polys)
        wires.append(wire)
        enc_times.append(t)
    commits = [silos[i].commit_message("bench", 1) for i in ids]  # commit before reveal
    for i in ids:
        silos[i].accept_commitments("bench", 1, commits)

    def aggregate() -> bytes:
        acc = SectionSum(pub.job_key, p)
        for i, wire in enumerate(wires):  # the he service: every check, then the sum
            checked = job.check_section(wire, "bench", 1, ids[i])
            acc.add(sections.residues(checked.payload, pub.job_key, p), checked.entry)
        return acc.result("bench", 1)

    runs = [_clock(aggregate) for _ in range(3)]
    total, agg_s = min(runs, key=lambda r: r[1])
    view = parse_sum(total, pub.job_key, p)
    sketches, sketch_times = {}, []
    for i in ids:  # step 1: every silo; each sketches its own section
        sketches[i], t = _clock(lambda i=i: silos[i].sketch_message(view))
        sketch_times.append(t)
    board: dict[str, Any] = {"sketches": sketches,
                             "decryptors": ids[:params.threshold]}
    check_times, partials, partial_times = [], {}, []
    for i in ids:  # step 2: each silo checks the sum; here every silo decrypts (timing)
        team = board["decryptors"] if i in board["decryptors"] else [
            *board["decryptors"][:-1], i]
        mine = {**board, "decryptors": team}
        _, t = _clock(lambda i=i, mine=mine: silos[i].check(view, mine))
        check_times.append(t)
        msg, t = _clock(lambda i=i, mine=mine: silos[i].partial_message(view, mine))
        partials[i] = msg
        partial_times.append(t)
    board["partials"] = {i: partials[i] for i in board["decryptors"]}
    got, comb_s = _clock(lambda: silos[ids[0]].combine(view, board) / view.weight)
    ref = np.sum([x.astype(np.float64) * w for x, w in zip(xs, ws, strict=True)], axis=0)
    ref /= sum(ws)
    partial_s = float(np.median(partial_times))
    return {"keygen_s": keygen_s, "encrypt_s": float(np.median(enc_times)),
            "aggregate_s": agg_s, "sketch_s": float(np.median(sketch_times)),
            "sum_check_s": float(np.median(check_times)), "partial_s": partial_s,
            "combine_s": comb_s, "decrypt_s": params.threshold * partial_s + comb_s,
            "decrypt_all_s": CLIENTS * partial_s + comb_s,
            "bytes_per_update": len(wires[0]), "expansion": len(wires[0]) / (4 * p),
            "max_abs_error": float(np.abs(got - ref).max()),
            "poly_degree": params.poly_degree, "primes": params.limbs,
            "threshold": params.threshold, "flood_bits": math.log2(params.flood_sigma),
            "scale_bits": math.log2(params.scale)}


def tenseal_recipe(p: int, xs: list[np.ndarray], ws: list[float]) -> dict[str, Any]:
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40])
    ctx.global_scale = 2**40
    slots = 4096
    chunks = math.ceil(p / slots)
    cts, enc_times = [], []
    for x in xs:
        def encrypt(x: np.ndarray = x) -> list[bytes]:
            return [ts.ckks_vector(ctx, x[i * slots:(i + 1) * slots].tolist()).serialize()
                    for i in range(chunks)]
        wire, t = _clock(encrypt)
        cts.append(wire)
        enc_times.append(t)

    def aggregate() -> list[Any]:
        total = None
        for k, wire in enumerate(cts):
            vecs = [ts.ckks_vector_from(ctx, c) * ws[k] for c in wire]
            total = vecs if total is None else [a + b for a, b in zip(total, vecs,
                                                                       strict=True)]
        return total or []

    total, agg_s = _clock(aggregate)
    got, dec_s = _clock(lambda: np.concatenate([np.array(v.decrypt()) for v in total])[:p])
    ref = np.sum([x.astype(np.float64) * w for x, w in zip(xs, ws, strict=True)], axis=0)
    nbytes = sum(len(c) for c in cts[0])
    return {"encrypt_s": float(np.median(enc_times)), "aggregate_s": agg_s,
            "decrypt_s": dec_s, "bytes_per_update": nbytes, "expansion": nbytes / (4 * p),
            "max_abs_error": float(np.abs(got / sum(ws) - ref / sum(ws)).max())}


def bench(sizes: list[int], tenseal_sizes: list[int]) -> dict[str, Any]:
    rows = []
    for p in sizes:
        xs, ws = workload(p)
        console.print(f"[bold]{CLIENTS} clients × {p:,} parameters")
        row: dict[str, Any] = {"p": p, "plaintext": plaintext(p, xs, ws),
                               "he": tsfl_he(p, xs, ws, None),
                               "he_selective_10": tsfl_he(p, xs, ws, 0.1)}
        row["threshold"] = tsfl_threshold(p, xs, ws)
        if p in tenseal_sizes:
            row["tenseal"] = tenseal_recipe(p, xs, ws)
        plain = row["plaintext"]["aggregate_s"]
        th, sh = row["threshold"], row["he"]
        row["threshold_vs_shared"] = {
            "encrypt": th["encrypt_s"] / sh["encrypt_s"],
            "aggregate": th["aggregate_s"] / sh["aggregate_s"],
            "decrypt": th["decrypt_s"] / sh["decrypt_s"],
            "bytes": th["bytes_per_update"] / sh["bytes_per_update"]}
        for name in ("he", "he_selective_10", "threshold", "tenseal"):
            if name in row:
                row[name]["aggregate_vs_plaintext"] = row[name]["aggregate_s"] / plain
        full, sel = row["he"], row["he_selective_10"]
        row["selective_vs_full"] = {
            "encrypt": sel["encrypt_s"] / full["encrypt_s"],
            "aggregate": sel["aggregate_s"] / full["aggregate_s"],
            "bytes": sel["bytes_per_update"] / full["bytes_per_update"]}
        if "tenseal" in row:
            row["selective_vs_tenseal_bytes"] = (sel["bytes_per_update"]
                                                 / row["tenseal"]["bytes_per_update"])
        rows.append(row)
    return {"clients": CLIENTS, "rows": rows}


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [("he", "tsfl CKKS, shared key"), ("he_selective_10", "tsfl CKKS 10%"),
             ("threshold", "tsfl threshold"), ("tenseal", "TenSEAL")]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.2
    for j, (key, label) in enumerate(names):
        xs = [i + j * width for i, r in enumerate(data["rows"]) if key in r]
        a.bar(xs, [r[key]["expansion"] for r in data["rows"] if key in r], width, label=label)
        b.bar(xs, [r[key]["aggregate_vs_plaintext"] for r in data["rows"] if key in r],
              width, label=label)
    ticks = [i + 1.5 * width for i in range(len(data["rows"]))]
    for ax, title in ((a, "bytes per update ÷ float32"),
                      (b, "server aggregation time ÷ plaintext")):
        ax.set_xticks(ticks, [f"{r['p']:,}" for r in data["rows"]])
        ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    a.axhline(4, color="k", ls="--", lw=0.8)
    b.axhline(30, color="k", ls="--", lw=0.8)
    a.legend()
    fig.suptitle(f"HE aggregation, {data['clients']} clients (dashed: targets)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--tenseal", type=int, nargs="*", default=[100_000],
                    help="sizes at which to run the TenSEAL recipe too (slow)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    data = bench(args.sizes, args.tenseal)
    rows = []
    for r in data["rows"]:
        for key in ("plaintext", "he", "he_selective_10", "threshold", "tenseal"):
            if key in r:
                c = r[key]
                rows.append([f"{r['p']:,}", key, c.get("encrypt_s", float("nan")),
                             c["aggregate_s"], c.get("aggregate_vs_plaintext", 1.0),
                             c.get("decrypt_s", float("nan")), c["bytes_per_update"] / 4 / r["p"],
                             c.get("max_abs_error", float("nan"))])
    print_table("CKKS aggregation (times in s; bytes ÷ float32)",
                ["P", "contender", "encrypt/client", "aggregate 10", "÷ plaintext",
                 "decrypt", "bytes ÷ f32", "max error"], rows)
    print_table("Threshold keying (10 silos, t = 6): the opening, in s",
                ["P", "keygen", "sketch/silo", "sum check/silo", "partial/silo", "combine",
                 "decrypt (t)", "decrypt (all 10)", "bytes ÷ f32", "max error"],
                [[f"{r['p']:,}", t["keygen_s"], t["sketch_s"], t["sum_check_s"],
                  t["partial_s"], t["combine_s"], t["decrypt_s"], t["decrypt_all_s"],
                  t["expansion"], t["max_abs_error"]]
                 for r in data["rows"] for t in [r["threshold"]]])
    print_table("Threshold ÷ shared key (SEAL), same run",
                ["P", "encrypt", "aggregate", "decrypt", "bytes"],
                [[f"{r['p']:,}", *r["threshold_vs_shared"].values()] for r in data["rows"]])
    path = write_results("he", data)
    plot(data, RESULTS / "he.png")
    console.print(f"wrote {path} and {RESULTS / 'he.png'}")


if __name__ == "__main__":
    main()
