"""Codec throughput: encode and decode MB/s of float32 input on one core, per chain.

Each chain runs on the same vector (1M float32 by default). The peer is the plain numpy
way to do top-k 1% + 8-bit (a full ``argpartition`` of |x|, one global min/max scale,
``np.rint``, int32 indices), run in the same process on the same input; the ratio
compares encode + decode of the two.

Run: ``python -m benchmarks.codecs [--n 1000000]``; writes ``results/codecs.json``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from benchmarks._common import console, print_table, timeit, write_results
from tsfl.compress import CodecChain, CodecSettings, decode_vector, encode_vector

CHAINS = [["f32", "zstd"], ["q8"], ["q4"], ["q2"], ["qsgd", "zstd"], ["randk", "f32"],
          ["topk", "f32"], ["topk", "q8"], ["topk", "q8", "zstd"], ["topk", "q4", "lz4"]]


def numpy_topk_q8(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    idx = np.argpartition(np.abs(x), x.size - k)[-k:].astype(np.int32)
    vals = x[idx]
    lo, hi = float(vals.min()), float(vals.max())
    q = np.rint((vals - lo) / ((hi - lo) / 255)).astype(np.uint8)
    return idx, q, lo, hi


def numpy_decode(idx: np.ndarray, q: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    out[idx] = lo + q * np.float32((hi - lo) / 255)
    return out


def bench(n: int, ratio: float = 0.01, repeats: int = 5) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n).astype(np.float32)
    mb = x.nbytes / 1e6
    settings = CodecSettings(ratio=ratio)
    results: dict[str, Any] = {}
    for names in CHAINS:
        chain = CodecChain.parse(names)
        enc = encode_vector(x, chain, settings, rng)
        payload = bytes(enc.payload)
        t_enc = timeit(lambda c=chain: encode_vector(x, c, settings, rng), repeats=repeats)
        t_dec = timeit(lambda c=chain, e=enc, p=payload: decode_vector(c, e.params, p, n),
                       repeats=repeats)
        err = float(np.abs(decode_vector(chain, enc.params, payload, n) - x).max())
        results[chain.label] = {
            "bytes": len(payload), "compression": x.nbytes / len(payload),
            "encode_mb_s": mb / t_enc, "decode_mb_s": mb / t_dec,
            "roundtrip_mb_s": mb / (t_enc + t_dec), "max_abs_error": err}
    k = max(1, round(n * ratio))
    t_np = timeit(lambda: numpy_decode(*numpy_topk_q8(x, k), n), repeats=repeats)
    ours = results["topk+q8"]
    results["numpy_topk+q8"] = {"roundtrip_mb_s": mb / t_np}
    return {"n": n, "ratio": ratio, "results": results,
            "topk_q8_vs_numpy": ours["roundtrip_mb_s"] / (mb / t_np)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--ratio", type=float, default=0.01)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    data = bench(args.n, args.ratio)
    rows = [[name, r.get("compression", float("nan")), r.get("encode_mb_s", float("nan")),
             r.get("decode_mb_s", float("nan")), r["roundtrip_mb_s"]]
            for name, r in data["results"].items()]
    print_table(f"codecs on {args.n:,} float32 (top-k/rand-k keep {args.ratio:.0%})",
                ["chain", "× smaller", "encode MB/s", "decode MB/s", "enc+dec MB/s"], rows)
    console.print(f"top-k + 8-bit encode+decode: "
                  f"{data['results']['topk+q8']['roundtrip_mb_s']:.0f} MB/s, "
                  f"{data['topk_q8_vs_numpy']:.1f}× the plain numpy way")
    console.print(f"wrote {write_results('codecs', data)}")


if __name__ == "__main__":
    main()
