"""Regenerate the results tables in benchmarks/README.md from benchmarks/results/*.json.

Run: ``python -m benchmarks.report``.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def _load(name: str) -> dict | None:
    path = HERE / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _size(p: int) -> str:
    return f"{p // 1_000_000}M" if p % 1_000_000 == 0 else f"{p // 1000}k"


def aggregation_table(data: dict) -> str:
    lines = ["| N | P | tsfl | floor | Flower | Flower ÷ tsfl | tsfl ÷ floor | tsfl+decode "
             "| Flower msg | Flower msg ÷ tsfl+decode |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        wire = r.get("tsfl_wire_s")
        msg = r.get("flower_msg_s")
        lines.append(
            f"| {r['n']} | {_size(r['p'])} | {r['tsfl_s'] * 1e3:.2f} | "
            f"{r['numpy_floor_s'] * 1e3:.2f} | {r['flower_s'] * 1e3:.1f} | "
            f"**{r['vs_flower']:.1f}×** | {r['vs_floor']:.2f} | "
            + (f"{wire * 1e3:.2f} | {msg * 1e3:.1f} | **{msg / wire:.1f}×** |" if wire else
               "– | – | – |"))
    return "\n".join(lines)


def end_to_end_table(data: dict) -> str:
    res, ratios = data["results"], data["ratios"]
    lines = ["| | rounds to 0.90 | ms per round | total s |", "|---|---:|---:|---:|"]
    for name in ("plain", "tsfl", "flower"):
        if name in res:
            r = res[name]
            rounds = r.get("rounds_to_target") or f"– ({r['rounds']} run)"
            lines.append(f"| {name} | {rounds} | {r['s_per_round'] * 1e3:.1f} | "
                         f"{r['total_s']:.1f} |")
    lines.append("")
    lines.append(f"tsfl ÷ plain per round: **{ratios['tsfl_over_plain_per_round']:.2f}×**; "
                 f"rounds to 0.90, tsfl ÷ plain: **{ratios['rounds_tsfl_over_plain']:.2f}**"
                 + (f"; Flower ÷ tsfl per round: **{ratios['flower_over_tsfl_per_round']:.1f}×**"
                    f" (Flower ÷ plain: {ratios['flower_over_plain_per_round']:.0f}×)"
                    if "flower_over_tsfl_per_round" in ratios else "") + ".")
    return "\n".join(lines)


def pipeline_table(data: dict) -> str:
    lines = ["| updates | update size | broker MB/s | pipeline MB/s | updates/s "
             "| pipeline ÷ broker |", "|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        lines.append(f"| {r['n']} | {r['update_kb']:.0f} KB | {r['broker_mb_per_s']:.1f} | "
                     f"{r['mb_per_s']:.1f} | {r['updates_per_s']:.0f} | "
                     f"**{r['pipeline_over_broker']:.2f}** |")
    c = data["round_close"]
    lines.append("")
    if "model_published_s" in c:
        hop = c["broker_hop_s"] * 1e3
        lines.append(f"Round close ({c['n']:,} updates × {_size(c['params'])} parameters), "
                     f"after the last update: model published on `tsfl.models` "
                     f"**{c['model_published_s'] * 1e3:.0f} ms**, round PUBLISHED persisted "
                     f"by the coordinator {c['round_close_s'] * 1e3:.0f} ms. The broker's "
                     f"own hop for one {c['update_bytes'] / 1e6:.0f} MB message in the same "
                     f"run: {hop:.0f} ms (the close crosses three: {3 * hop:.0f} ms).")
    else:
        lines.append(f"Round close ({c['n']} updates × {_size(c['params'])} parameters, last "
                     f"update in → model released and PUBLISHED persisted): "
                     f"**{c['round_close_s'] * 1e3:.0f} ms**.")
    return "\n".join(lines)


def privacy_table(data: dict) -> str:
    lines = []
    for dataset, rows in data["results"].items():
        rounds = data["rounds"][dataset] if isinstance(data["rounds"], dict) else data["rounds"]
        lines += [f"**{dataset}** ({rounds} rounds, δ = 1e-5)", "",
                  "| DP | ε target | ε spent | z | accuracy | ÷ no DP | MIA AUC | s/round "
                  "| ÷ no DP |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            eps = r["target_epsilon"]
            spent = f"{r['epsilon']:.2f}" if r["epsilon"] is not None else "–"
            z = f"{r['noise_multiplier']:.3f}" if r["noise_multiplier"] else "–"
            lines.append(f"| {r['mode']} | {eps if eps else '∞'} | {spent} | {z} | "
                         f"{r['accuracy']:.3f} | **{r['accuracy_vs_nodp']:.2f}** | "
                         f"{r['mia_auc']:.3f} | {r['round_s']:.3f} | "
                         f"{r['round_time_vs_nodp']:.2f}× |")
        lines.append("")
    over = _load("privacy_overhead")
    if over is not None:
        runs = over["runs"]
        lines.append(f"Round-time overhead (digits, {len(runs['none'])} alternating runs of "
                     f"{over['rounds']} rounds each, median s/round): no DP "
                     f"{statistics.median(runs['none']):.4f}, central DP ε = 8 "
                     f"{statistics.median(runs['central']):.4f}: **{over['ratio']:.2f}×**.")
    return "\n".join(lines).rstrip()


def robust_speed_table(data: dict) -> str:
    r = data["results"]
    lines = [f"{data['n']} updates × {data['d']:,} parameters, f = {data['f']} (same inputs, "
             "results checked equal first):", "",
             "| rule | tsfl ms | Flower ms | speed-up |", "|---|---:|---:|---:|"]
    for name in ("krum", "multikrum", "bulyan", "median", "trimmed_mean"):
        c = r[name]
        lines.append(f"| {name} | {c['tsfl_s'] * 1e3:.1f} | {c['flower_s'] * 1e3:.1f} | "
                     f"**{c['speedup']:.1f}×** |")
    w = r["wfagg"]
    lines.append(f"| wfagg (vs Flower's Krum) | {w['tsfl_s'] * 1e3:.1f} | "
                 f"{w['flower_krum_s'] * 1e3:.1f} | **{w['vs_flower_krum']:.1f}×** |")
    return "\n".join(lines)


def robustness_table(data: dict) -> str:
    md = (RESULTS / "robustness.md").read_text() if (RESULTS / "robustness.md").exists() else ""
    return "\n".join(line.replace("## ", "#### ") for line in md.splitlines()
                     if not line.startswith("# ")).strip()


def codecs_table(data: dict) -> str:
    r = data["results"]
    lines = [f"{data['n']:,} float32 values (4 MB), one core; top-k / random-k keep "
             f"{data['ratio']:.0%}:", "",
             "| chain | × smaller | encode MB/s | decode MB/s | encode + decode MB/s |",
             "|---|---:|---:|---:|---:|"]
    for name, c in r.items():
        if "encode_mb_s" in c:
            lines.append(f"| {name} | {c['compression']:.1f} | {c['encode_mb_s']:.0f} | "
                         f"{c['decode_mb_s']:.0f} | {c['roundtrip_mb_s']:.0f} |")
    lines.append(f"| plain numpy top-k + 8-bit (peer) | | | | "
                 f"{r['numpy_topk+q8']['roundtrip_mb_s']:.0f} |")
    lines += ["", f"Top-k 1% + 8-bit: **{r['topk+q8']['roundtrip_mb_s']:.0f} MB/s** encode + "
              f"decode (target ≥ 200), {data['topk_q8_vs_numpy']:.1f}× the plain numpy way."]
    return "\n".join(lines)


def compression_table(data: dict) -> str:
    lines = [f"Mean over seeds {data['seeds']}; Δ = accuracy points lost against float32 "
             "FedAvg (negative: gained). Plot: `results/compression.png`.", ""]
    for name, rows in data["datasets"].items():
        lines += [f"#### {name}", "",
                  "| chain | uplink MB | × fewer bytes | final acc | Δ pp | last-5 acc | Δ pp |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for label, r in rows.items():
            lines.append(f"| {label} | {r['bytes_up'] / 1e6:.2f} | {r['uplink_reduction']:.1f} | "
                         f"{r['final_accuracy']:.4f} | {r['accuracy_drop_pp']:+.2f} | "
                         f"{r['last5_accuracy']:.4f} | {r['last5_drop_pp']:+.2f} |")
        lines.append("")
    sv = data["savings"]
    d, k, a = sv["downlink"], sv["skip"], sv["adaptive"]
    lines += ["#### Other savings (digits, top-k 10% + q8 + zstd unless said)", "",
              "| measure | baseline | with it | saving | final acc (baseline → with) |",
              "|---|---:|---:|---:|---|",
              f"| downlink bytes, `downlink: delta` | {d['full_bytes'] / 1e6:.1f} MB | "
              f"{d['delta_bytes'] / 1e6:.1f} MB | {d['reduction']:.2f}× | "
              f"{d['accuracy'][0]:.4f} → {d['accuracy'][1]:.4f} (lossless) |",
              f"| uplink bytes, `skip_below: {k['threshold']}` ({k['skipped']} of "
              f"{k['updates']} uploads skipped) | {k['baseline_bytes_up'] / 1e6:.2f} MB | "
              f"{k['bytes_up'] / 1e6:.2f} MB | {k['baseline_bytes_up'] / k['bytes_up']:.2f}× | "
              f"{k['accuracy'][0]:.4f} → {k['accuracy'][1]:.4f} |",
              f"| slowest upload per round (simulated links, budget {a['deadline_budget_s']} s), "
              f"adaptive vs f32 | {a['f32_mean_slowest_upload_s']:.2f} s | "
              f"{a['adaptive_mean_slowest_upload_s']:.2f} s | "
              f"{a['f32_mean_slowest_upload_s'] / a['adaptive_mean_slowest_upload_s']:.1f}× | "
              f"{a['accuracy'][0]:.4f} → {a['accuracy'][1]:.4f} |"]
    return "\n".join(lines)


def transfer_table(data: dict) -> str:
    r = data["results"]
    size = data["model_bytes"]
    lines = [f"A {size / 1e6:.0f} MB model from a coordinator process over gRPC (loopback); "
             "peak = the device process's high-water mark above its size before:", "",
             "| contender | peak above start | × model | MB/s |", "|---|---:|---:|---:|"]
    for name in ("tsfl", "naive"):
        c = r[name]
        lines.append(f"| {name} | {c['peak_bytes'] / 1e6:.0f} MB | "
                     f"**{c['peak_bytes'] / size:.2f}×** | {c['mb_s']:.0f} |")
    return "\n".join(lines)


def he_table(data: dict) -> str:
    lines = [f"{data['clients']} clients; times in ms (encrypt and decrypt: one client — "
             "threshold decrypt: the opening's t partial decryptions + the combination; "
             "aggregate: the server's fold of all updates, parse and checks included); bytes "
             "per update ÷ float32. Plot: `results/he.png`.", "",
             "| P | contender | encrypt | aggregate | ÷ plaintext | decrypt | bytes ÷ f32 | "
             "max error |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    names = {"plaintext": "plaintext fold", "he": "tsfl CKKS, shared key",
             "he_selective_10": "tsfl CKKS, shared key, 10% encrypted",
             "threshold": "tsfl threshold (10 silos, t = 6)", "tenseal": "TenSEAL recipe"}
    for r in data["rows"]:
        for key, label in names.items():
            if key not in r:
                continue
            c = r[key]
            enc = f"{c['encrypt_s'] * 1e3:.1f}" if "encrypt_s" in c else "–"
            dec = f"{c['decrypt_s'] * 1e3:.1f}" if "decrypt_s" in c else "–"
            ratio = c.get("aggregate_vs_plaintext", 1.0)
            err = f"{c['max_abs_error']:.1e}" if "max_abs_error" in c else "–"
            lines.append(f"| {_size(r['p'])} | {label} | {enc} | {c['aggregate_s'] * 1e3:.1f} | "
                         f"**{ratio:.1f}×** | {dec} | **{c['bytes_per_update'] / 4 / r['p']:.2f}** "
                         f"| {err} |")
    lines += ["", "Selective (10%) against full encryption:", "",
              "| P | encrypt | aggregate | bytes | bytes vs TenSEAL full |",
              "|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        sv = r["selective_vs_full"]
        ts = r.get("selective_vs_tenseal_bytes")
        lines.append(f"| {_size(r['p'])} | {sv['encrypt']:.2f}× | {sv['aggregate']:.2f}× | "
                     f"{sv['bytes']:.2f}× | {f'{ts:.2f}×' if ts else '–'} |")
    rows = [r for r in data["rows"] if "threshold" in r]
    if rows:
        lines += ["", "Threshold keying, the opening (ms; per silo, or for the opening's "
                  "decryption on one machine: t = 6 partial decryptions + the combination, "
                  "and all 10 silos' partials + the combination):", "",
                  "| P | key ceremony | sketch / silo | sum check / silo | partial / silo | "
                  "combine | **decrypt (t)** | decrypt (all 10) | bytes ÷ f32 | max error |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            t = r["threshold"]
            lines.append(
                f"| {_size(r['p'])} | {t['keygen_s'] * 1e3:.0f} | {t['sketch_s'] * 1e3:.0f} | "
                f"{t['sum_check_s'] * 1e3:.0f} | {t['partial_s'] * 1e3:.0f} | "
                f"{t['combine_s'] * 1e3:.0f} | **{t['decrypt_s'] * 1e3:.0f}** | "
                f"{t['decrypt_all_s'] * 1e3:.0f} | **{t['expansion']:.2f}** | "
                f"{t['max_abs_error']:.1e} |")
        lines += ["", "Threshold ÷ shared key (SEAL), same run:", "",
                  "| P | encrypt | aggregate | decrypt (t) | bytes |",
                  "|---:|---:|---:|---:|---:|"]
        for r in rows:
            v = r["threshold_vs_shared"]
            lines.append(f"| {_size(r['p'])} | {v['encrypt']:.2f}× | {v['aggregate']:.1f}× | "
                         f"{v['decrypt']:.1f}× | {v['bytes']:.2f}× |")
    return "\n".join(lines)


def secagg_table(data: dict) -> str:
    lines = [f"One round, {data['size']:,} parameters, every client and the server in one "
             "process (client: mean per client; dropouts vanish before their masked vector; "
             f"γ = {data.get('corruption', 0.05)}, δ = max(0.1, dropouts), σ = "
             f"{data.get('security_bits', 40)}; median of {data.get('repeats', 1)} "
             "alternating rounds at 100 clients, one at 1,000). *Later round*: "
             "certificates checked in an earlier round; *first round*: every device checks "
             "every certificate. *Before*: the semi-honest protocol this replaced (the "
             "commit before issue #17), same inputs. Plot: `results/secagg.png`.", "",
             "| clients | dropouts | k / t | client | server | later round | first round | "
             "before | ÷ before (later / first) | hybrid PQ | Flower | Flower ÷ tsfl | "
             "per client | exact sum |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in data["rows"]:
        t, f, b, h = r["tsfl"], r.get("flower"), r.get("baseline"), r.get("hybrid")
        exact = t["exact"] and r.get("tsfl_first", t)["exact"] and (h or t)["exact"]
        lines.append(
            f"| {r['clients']} | {r['dropout']:.0%} | {t['neighbours']} / {t['threshold']} | "
            f"{t['client_s'] * 1e3:.0f} ms | {t['server_s']:.2f} s | {t['total_s']:.1f} s | "
            + (f"{r['tsfl_first']['total_s']:.1f} s | " if "tsfl_first" in r else "– | ")
            + (f"{b['total_s']:.1f} s (k {b['neighbours']}) | **{r['tsfl_vs_baseline']:.2f}×** "
               f"/ {r['first_vs_baseline']:.2f}× | " if b else "– | – | ")
            + (f"{h['total_s']:.1f} s | " if h else "– | ")
            + (f"{f['total_s']:.1f} s | **{r['flower_vs_tsfl']:.1f}×** | " if f else
               "not run | – | ")
            + f"{t['bytes_per_client'] / 1e3:.0f} kB | {'yes' if exact else 'NO'} |")
    agreement = data.get("key_agreement")
    if agreement:
        by_k: dict[int, dict[str, dict]] = {}
        for a in agreement:
            by_k.setdefault(a["k"], {})[a["key_agreement"]] = a
        lines += ["", "Share-channel key agreement per client (its key pairs, then per "
                      "neighbour the exchange, encapsulation and sealing key, per received "
                      "share the decapsulation and opening key):", "",
                  "| k | X25519 | X25519 + ML-KEM-768 | ratio | extra bytes per client |",
                  "|---:|---:|---:|---:|---:|"]
        for k, modes in sorted(by_k.items()):
            x, hy = modes["x25519"], modes["x25519+mlkem768"]
            lines.append(f"| {k} | {x['client_ms']:.1f} ms | {hy['client_ms']:.1f} ms | "
                         f"{hy['client_ms'] / x['client_ms']:.1f}× | "
                         f"{hy['extra_bytes'] / 1e3:.0f} kB |")
    return "\n".join(lines)


def scale_embedded_table(data: dict) -> str:
    lines = ["| model | P | clients | plain clients/s | batched clients/s | batched ÷ plain "
             "| max \\|Δθ\\| |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in data["training"]:
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['clients']:,} | "
                     f"{r['plain_clients_per_s']:,.0f} | {r['batched_clients_per_s']:,.0f} | "
                     f"**{r['speedup']:.1f}×** | {r['max_abs_diff']:.1e} |")
    if data.get("embedded"):
        lines += ["", "| whole embedded round (logreg) | clients | off s/round | auto s/round "
                  "| off ÷ auto |", "|---|---:|---:|---:|---:|"]
        for r in data["embedded"]:
            lines.append(f"| | {r['clients']:,} | {r['off_round_s']:.2f} | "
                         f"{r['auto_round_s']:.2f} | **{r['speedup']:.2f}×** |")
    m = data["memory"]
    lines += ["", f"A {m['clients']:,}-client population, built ({m['build_s']:.1f} s) and one "
              f"{m['cohort']:,}-client cohort trained from it: peak RSS "
              f"**{m['peak_rss'] / 2**30:.2f} GiB** ({m['floor_rss'] / 2**20:.0f} MiB of it the "
              f"interpreter and torch; {m['clients_made']:,} client objects made); the same "
              f"population's records materialised whole: "
              f"{m['eager_records_bytes'] / 2**30:.1f} GiB."]
    return "\n".join(lines)


def main() -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    for name, render in (("aggregation", aggregation_table), ("end_to_end", end_to_end_table),
                         ("pipeline", pipeline_table), ("privacy", privacy_table),
                         ("robust_speed", robust_speed_table),
                         ("robustness", robustness_table), ("codecs", codecs_table),
                         ("compression", compression_table), ("transfer", transfer_table),
                         ("he", he_table), ("secagg", secagg_table),
                         ("scale_embedded", scale_embedded_table)):
        data = _load(name)
        if data is None:
            continue
        block = f"<!-- {name}:start -->\n{render(data)}\n<!-- {name}:end -->"
        pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
        text = pattern.sub(lambda _m, b=block: b, text)
    readme.write_text(text)
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
