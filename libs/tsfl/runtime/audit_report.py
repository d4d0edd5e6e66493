"""What a privacy audit reports: the finished audit (:class:`PrivacyAudit`), its JSON, its
plot and its terminal line. The run itself is :mod:`tsfl.runtime.canaries`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tsfl.config import JobSpec
from tsfl.privacy.audit import AuditResult
from tsfl.runtime.embedded import RunResult

if TYPE_CHECKING:
    from tsfl.runtime.canaries import CanarySet


@dataclass
class PrivacyAudit:
    """A finished audit: the run, the canaries, their scores and the bound."""

    spec: JobSpec  # the audited job (canaries in its population; noise as calibrated)
    honest_clients: int
    canaries: CanarySet
    scores: dict[str, np.ndarray]  # by statistic
    uploads: np.ndarray | None  # local DP: uploads per canary
    result: AuditResult
    accounted_epsilon: float
    run: RunResult
    absent: str
    wall_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return self.spec.privacy.mode

    @property
    def ratio(self) -> float | None:
        return (self.result.epsilon / self.accounted_epsilon
                if self.accounted_epsilon > 0 else None)

    def adversary(self) -> str:
        if self.mode == "central":
            return ("model consumers: every released model (the run's checkpoints), nothing "
                    "about who took part")
        return "the server: every upload and who sent it"

    def statistics(self) -> dict[str, str]:
        if self.mode == "central":
            return {"sum": "sum over released rounds r of x_ir = <theta_r - theta_(r-1), u_i> "
                           "(= <theta_R - theta_0, u_i>)",
                    "llr": "sum over r of log(1 - q + q exp((mu_i x_ir - mu_i^2/2)/sigma^2)): "
                           "mu_i the canary's step along u_i, sigma the spread of all x_ir, "
                           "q the sampling rate"}
        return {"sum": "sum over canary i's uploads y of <y, u_i> - t_i (a_in + a_out)/2 "
                       "(t_i uploads; the Gaussian log-likelihood ratio up to a factor)"}

    def summary(self) -> dict[str, Any]:
        """privacy_audit.json (without the per-canary arrays: see :meth:`to_json`)."""
        s, p, r = self.spec, self.spec.privacy, self.result
        ledger = self.run.ledger[-1] if self.run.ledger else {}
        metrics = self.run.metrics
        acc = next((m["test_accuracy"] for m in reversed(metrics)
                    if m.get("test_accuracy") is not None), None)
        return {
            "job": s.name, "job_id": self.run.job_id, "mode": p.mode,
            "mechanism": p.mechanism, "adversary": self.adversary(),
            "statistics": self.statistics(),
            "accounted": {"epsilon": self.accounted_epsilon, "delta": p.delta,
                          "noise_multiplier": p.noise_multiplier,
                          "target_epsilon": p.target_epsilon,
                          "sampling": "none" if p.mode == "local" else p.sampling,
                          "sampling_rate": ledger.get("sampling_rate"),
                          "clip_norm": p.clip_norm, "rounds_charged": len(self.run.ledger),
                          "accountant": ledger.get("accountant")},
            "empirical": {
                "epsilon_lower_bound": r.epsilon, "confidence": r.confidence,
                "delta": r.delta,
                "method": ("Steinke, Nasr & Jagielski 2023 (one-run audit), Theorem 3: the "
                           "smallest eps whose p-value f(v) + 2 m delta max_i "
                           "(f(v-i) - f(v))/i exceeds beta/J, f = Binomial(r, e^eps/(1+e^eps)) "
                           "tail; the best of J (statistic, k+, k-) tests fixed in advance "
                           "(Bonferroni)"),
                "statistic": r.statistic, "k_pos": r.k_pos, "k_neg": r.k_neg, "guesses": r.guesses,
                "correct": r.correct, "threshold_in": r.threshold_in,
                "threshold_out": r.threshold_out, "tests": r.tests,
                "choices": [{"statistic": c.statistic, "k_pos": c.k_pos, "k_neg": c.k_neg,
                             "guesses": c.guesses, "correct": c.correct,
                             "epsilon": c.epsilon}
                            for c in r.candidates]},
            "ratio": self.ratio,
            "canaries": {"count": self.canaries.count,
                         "included": int(self.canaries.included.sum()),
                         "seed": self.canaries.seed, "norm": self.canaries.norm,
                         "clip_norm": self.canaries.clip_norm,
                         "design": "random direction u_i (unit L2), update C u_i/|u_i|",
                         "absent": self.absent,
                         "honest_clients": self.honest_clients,
                         "population": s.clients.count, "per_round": s.clients.per_round},
            "run": {"status": self.run.status, "reason": self.run.reason,
                    "rounds": len(metrics), "final_test_accuracy": acc,
                    "run_wall_s": self.run.wall_s, "wall_s": self.wall_s},
            "notes": self.notes,
        }

    def to_json(self) -> dict[str, Any]:
        out = self.summary()
        out["per_canary"] = {"included": [bool(b) for b in self.canaries.included],
                             **{f"score_{name}": [float(v) for v in values]
                                for name, values in self.scores.items()}}
        if self.uploads is not None:
            out["per_canary"]["uploads"] = [int(u) for u in self.uploads]
        return out


def write_audit_outputs(out_dir: Path, result: PrivacyAudit) -> tuple[Path, Path]:
    """``privacy_audit.json`` and ``privacy_audit.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "privacy_audit.json"
    json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    png_path = out_dir / "privacy_audit.png"
    plot_audit(result, png_path)
    return json_path, png_path


def plot_audit(result: PrivacyAudit, path: Path) -> None:
    """Score histograms of included and excluded canaries with the guess thresholds, and
    the empirical bound beside the accounted ε."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = result.result
    inc = result.canaries.included
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
    s = result.scores[r.statistic]
    lo, hi = float(np.min(s)), float(np.max(s))
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 40)
    ax.hist(s[~inc], bins=bins, alpha=0.6, color="tab:blue",
            label=f"excluded ({int((~inc).sum())})")
    ax.hist(s[inc], bins=bins, alpha=0.6, color="tab:orange",
            label=f"included ({int(inc.sum())})")
    if r.threshold_in is not None:
        ax.axvline(r.threshold_in, color="tab:red", linestyle="--",
                   label=f"guess in: top {r.k_pos}")
    if r.threshold_out is not None:
        ax.axvline(r.threshold_out, color="tab:green", linestyle="--",
                   label=f"guess out: bottom {r.k_neg}")
    ax.set_xlabel(f"membership score ({r.statistic})")
    ax.set_ylabel("canaries")
    ax.set_title(f"{result.spec.name}: {result.mode} DP, {result.canaries.count} canaries, "
                 f"{r.correct}/{r.guesses} guesses correct")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    values = [result.accounted_epsilon, r.epsilon]
    bars = bx.bar(["accounted ε", f"lower bound\n({100 * r.confidence:.0f}%)"], values,
                  color=["tab:gray", "tab:red" if r.epsilon > result.accounted_epsilon
                         else "tab:green"])
    for bar, v in zip(bars, values, strict=True):
        bx.annotate(f"{v:.3g}", (bar.get_x() + bar.get_width() / 2, v), ha="center",
                    va="bottom", fontsize=9)
    bx.set_ylim(0, max(values) * 1.2 if max(values) > 0 else 1.0)
    bx.set_title(f"δ = {result.spec.privacy.delta:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_line(result: PrivacyAudit) -> str:
    """The terminal summary."""
    r = result.result
    ratio = result.ratio
    return (f"privacy audit ({result.mode} DP, {result.spec.privacy.mechanism}): accounted "
            f"ε = {result.accounted_epsilon:.3f} at δ = {result.spec.privacy.delta:g}; "
            f"empirical lower bound ε ≥ {r.epsilon:.3f} ({100 * r.confidence:.0f}%)"
            + (f" = {ratio:.2f} × accounted" if ratio is not None and math.isfinite(ratio)
               else "")
            + f"; {result.canaries.count} canaries ({int(result.canaries.included.sum())} "
              f"in), {r.correct}/{r.guesses} guesses correct")
