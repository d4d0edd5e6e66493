"""Run outputs: metrics.json, summary.json and curves.png."""

from __future__ import annotations

import contextlib
import json
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from tsfl.config import JobSpec


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("truststram-fl", "torch", "numpy", "scikit-learn", "sqlalchemy", "msgpack"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def robustness_summary(spec: JobSpec, participants: Sequence[Mapping[str, Any]],
                       malicious: set[str] | frozenset[str],
                       backdoor_asr: float | None = None) -> dict[str, Any] | None:
    """The ``robustness`` block: the attack, the rule and detection over the whole run
    (a detection is a refused update; TPR over attackers' judged updates, FPR over the
    honest ones)."""
    r, a = spec.robust, spec.attacks
    if r.aggregator == "none" and a.kind == "none":
        return None
    judged = [p for p in participants
              if (p.get("metrics") or {}).get("verdict") is not None]
    bad = [p for p in judged if p["client_id"] in malicious]
    good = [p for p in judged if p["client_id"] not in malicious]

    def refused(rows: Sequence[Mapping[str, Any]]) -> int:
        return sum(1 for p in rows if p["metrics"]["verdict"]["weight"] <= 0)

    return {"attack": a.kind, "fraction": a.fraction, "collude": a.collude,
            "aggregator": r.aggregator, "num_malicious": r.num_malicious,
            "tpr": refused(bad) / len(bad) if bad else None,
            "fpr": refused(good) / len(good) if good else None,
            "judged_updates": len(judged), "malicious_updates": len(bad),
            "backdoor_success_rate": backdoor_asr}


def record_level_summary(spec: JobSpec, metrics: list[dict[str, Any]]
                         ) -> dict[str, Any] | None:
    """Record-level DP-SGD: the settings and the largest ε any simulated device's own
    ledger holds (a device never uploads it: in simulation the harness reads them)."""
    d = spec.training.dp_sgd
    if d is None:
        return None
    spent = [m["record_epsilon"] for m in metrics if m.get("record_epsilon") is not None]
    return {"noise_multiplier": d.noise_multiplier, "max_grad_norm": d.max_grad_norm,
            "delta": d.delta, "epsilon_max": max(spent, default=0.0), "accountant": "pld",
            "noise": d.noise, "guarantee": guarantee(spec),
            "source": "the devices' own ledgers (never uploaded)"}


def privacy_summary(spec: JobSpec, ledger: list[dict[str, Any]],
                    metrics: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The ``privacy`` block of summary.json, from the ledger (what was really charged),
    with ``record_level`` for DP-SGD clients."""
    p = spec.privacy
    record = record_level_summary(spec, metrics or [])
    if p.mode == "none":
        return {"mode": "none", "record_level": record} if record else None
    last = ledger[-1] if ledger else None
    details = (last or {}).get("details") or {}
    sampling = "none" if p.mode == "local" else p.sampling
    return {
        "mode": p.mode,
        "epsilon": last["epsilon"] if last else 0.0,
        "delta": p.delta,
        "target_epsilon": p.target_epsilon,
        "mechanism": p.mechanism,
        "noise_multiplier": p.noise_multiplier,
        "epsilon_per_round": p.epsilon_per_round,
        "sampling_rate": last["sampling_rate"] if last else (
            1.0 if p.mode == "local" else spec.clients.per_round / spec.clients.count),
        "sampling": sampling,
        "clip_norm": p.clip_norm,
        "final_clip_norm": details.get("next_clip_norm", p.clip_norm),
        "adaptive_clipping": p.adaptive_clipping is not None,
        "rounds": len(ledger),
        "accountant": last["accountant"] if last else ("rdp" if sampling == "fixed" else "pld"),
        "epsilon_pld": details.get("pld"),
        "epsilon_rdp": details.get("rdp"),
        "accounting_interval": p.accounting_interval,
        "amplified": details.get("amplified"),
        "noise": p.noise,
        "guarantee": guarantee(spec),
        "neighboring": details.get("neighboring", "replace_one" if sampling == "fixed"
                                   else "add_remove"),
        "population": details.get("population"),
        "record_level": record,
    }


def guarantee(spec: JobSpec) -> str:
    """What the run's ε means, in one phrase (docs/privacy.md has the long form)."""
    if spec.seeded_privacy:
        return ("reproducible, not private: noise and cohorts come from the job seed "
                f"({', '.join(spec.seeded_privacy)} is 'seeded'); anyone with the seed can "
                "regenerate and subtract them")
    if spec.privacy.mode == "central":
        return ("client-level (ε, δ) against everyone who sees released models; the "
                "server is trusted with clipped updates; cohorts secret (CSPRNG)")
    if spec.privacy.mode == "local":
        return ("client-level (ε, δ) per device against the server and every reader of "
                "its uploads; noise drawn on the device; no amplification")
    return "record-level (ε, δ) per silo against the server (DP-SGD on the device)"


def summarize(spec: JobSpec, metrics: list[dict[str, Any]], *, wall_s: float, job_id: str,
              status: str, reason: str | None,
              ledger: list[dict[str, Any]] | None = None,
              robustness: dict[str, Any] | None = None,
              crypto: dict[str, Any] | None = None) -> dict[str, Any]:
    accs = [m["test_accuracy"] for m in metrics if m["test_accuracy"] is not None]
    final = next((m["test_accuracy"] for m in reversed(metrics)
                  if m["test_accuracy"] is not None), None)
    return {
        "job": spec.name,
        "job_id": job_id,
        "status": status,
        "reason": reason,
        "final_test_accuracy": final,
        "best_test_accuracy": max(accs) if accs else None,
        "rounds": len(metrics),
        "bytes_up": sum(m["bytes_up"] for m in metrics),
        "bytes_down": sum(m["bytes_down"] for m in metrics),
        "wall_s": wall_s,
        "seed": spec.seed,
        "config_sha256": spec.sha256(),
        "strategy": spec.strategy.name,
        "versions": package_versions(),
        "privacy": privacy_summary(spec, ledger or [], metrics),
        "robustness": robustness,
        "compression": compression_summary(spec, metrics),
        "crypto": crypto or {"mode": spec.crypto.mode},
    }


def compression_summary(spec: JobSpec, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Uplink bytes per codec chain over the run, and what skipping saved."""
    chains: dict[str, dict[str, int]] = {}
    for m in metrics:
        for label, stats in (m.get("codecs") or {}).items():
            total = chains.setdefault(label, {"updates": 0, "bytes": 0})
            total["updates"] += stats["updates"]
            total["bytes"] += stats["bytes"]
    c = spec.compression
    return {"uplink_chain": list(c.uplink.chain), "downlink": c.downlink,
            "adaptive": c.adaptive is not None, "by_chain": chains,
            "skipped_uploads": sum(m.get("skipped", 0) for m in metrics)}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def plot_curves(metrics: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evald = [m for m in metrics if m["test_accuracy"] is not None]
    rounds = [m["round"] for m in evald]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    ax_acc.plot(rounds, [m["test_accuracy"] for m in evald], color="tab:blue")
    ax_acc.set_xlabel("round")
    ax_acc.set_ylabel("central test accuracy")
    ax_acc.set_ylim(0, 1)
    ax_acc.grid(alpha=0.3)
    ax_loss.plot(rounds, [m["test_loss"] for m in evald], label="test loss", color="tab:red")
    train = [(m["round"], m["train_loss"]) for m in metrics if m["train_loss"] is not None]
    if train:
        ax_loss.plot(*zip(*train, strict=True), label="train loss (clients)", color="tab:orange",
                     alpha=0.7)
    ax_loss.set_xlabel("round")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_privacy(metrics: list[dict[str, Any]], path: Path, title: str,
                 target: float | None) -> None:
    """ε spent against round, next to accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spent = [(m["round"], m["epsilon"]) for m in metrics if m.get("epsilon") is not None]
    record = [(m["round"], m["record_epsilon"]) for m in metrics
              if m.get("record_epsilon") is not None]
    evald = [(m["round"], m["test_accuracy"]) for m in metrics
             if m["test_accuracy"] is not None]
    fig, (ax_eps, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    if spent:
        ax_eps.plot(*zip(*spent, strict=True), color="tab:purple", label="ε spent")
    if record:
        ax_eps.plot(*zip(*record, strict=True), color="tab:green",
                    label="record-level ε (DP-SGD, max over clients)")
    if target is not None:
        ax_eps.axhline(target, color="tab:red", linestyle="--", label=f"budget ε={target:g}")
    ax_eps.set_xlabel("round")
    ax_eps.set_ylabel("ε")
    ax_eps.grid(alpha=0.3)
    ax_eps.legend()
    if evald:
        ax_acc.plot(*zip(*evald, strict=True), color="tab:blue")
    ax_acc.set_xlabel("round")
    ax_acc.set_ylabel("central test accuracy")
    ax_acc.set_ylim(0, 1)
    ax_acc.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out_dir: Path, spec: JobSpec, metrics: list[dict[str, Any]],
                  summary: dict[str, Any]) -> None:
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "summary.json", summary)
    plot_curves(metrics, out_dir / "curves.png", f"{spec.name} ({spec.strategy.name})")
    if summary.get("privacy"):
        p = summary["privacy"]
        if p["mode"] == "none":  # record-level DP-SGD only
            r = p["record_level"]
            title = (f"{spec.name}: DP-SGD, σ={r['noise_multiplier']:g}, "
                     f"C={r['max_grad_norm']:g}, δ={r['delta']:g}")
        else:
            title = f"{spec.name}: {p['mode']} DP, {p['mechanism']}, δ={p['delta']:g}"
        plot_privacy(metrics, out_dir / "privacy.png", title, p.get("target_epsilon"))
