"""Anomaly detection beyond a rule's filtering: round-level sanity checks, per-client
reputation across rounds, and sudden-change flags.

- **Sanity checks** against the round's consensus, the coordinate-wise median m: an
  update pointing against it (cos(xᵢ, m) < ``min_cosine``) or larger than
  ``max_norm_ratio`` × the round's median norm is flagged and refused. Count-based
  filters (Krum, WFAgg's D and C) always drop a fixed number of updates, so when the
  attackers pass one filter (a scaled update keeps its direction; a flipped one can sit
  at a benign distance in a noisy round) that filter drops honest clients instead; the
  checks catch what the count misses.
- **Reputation**: an exponential moving average of the client's acceptance, starting
  from 1: rᵢ ← (1 − λ)·rᵢ + λ·[accepted]. A client below the threshold is refused until
  it recovers (a benign client refused once recovers; one refused round after round
  does not).
- **Sudden change**: a norm more than ``norm_jump`` times the client's own moving
  average, or a training loss (as the client reports it) more than ``loss_jump`` times
  its own moving average — a client that starts poisoning, or whose data changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tsfl.robust import geometry


def sanity_flags(x: np.ndarray, min_cosine: float | None, max_norm_ratio: float | None
                 ) -> list[str | None]:
    """Per update: why it fails the round's sanity checks (None when it passes)."""
    n = len(x)
    if n < 3 or (min_cosine is None and max_norm_ratio is None):
        return [None] * n
    med = np.median(x, axis=0)
    cos = 1.0 - geometry.cosine_distances_to(x, med)
    norms = geometry.norms(x)
    typical = float(np.median(norms))
    out: list[str | None] = []
    for c, v in zip(cos, norms, strict=True):
        if min_cosine is not None and c < min_cosine:
            out.append(f"opposed: cosine to the round's median {c:.2f} < {min_cosine:g}")
        elif max_norm_ratio is not None and typical > 0 and v > max_norm_ratio * typical:
            out.append(f"oversized: norm {v:.3g} > {max_norm_ratio:g}× the round's median "
                       f"{typical:.3g}")
        else:
            out.append(None)
    return out


@dataclass
class Reputation:
    ema: float = 0.4
    threshold: float = 0.3  # 0 disables refusals by reputation
    norm_jump: float = 5.0
    loss_jump: float = 3.0
    scores: dict[str, float] = field(default_factory=dict)
    norm_avg: dict[str, float] = field(default_factory=dict)
    loss_avg: dict[str, float] = field(default_factory=dict)

    def update(self, client: str, accepted: bool) -> float:
        prev = self.scores.get(client, 1.0)
        self.scores[client] = (1 - self.ema) * prev + self.ema * float(accepted)
        return self.scores[client]

    def current(self, client: str) -> float:
        return self.scores.get(client, 1.0)

    def low(self, value: float) -> bool:
        return value < self.threshold

    def norm_flag(self, client: str, norm: float) -> str | None:
        """A sudden-change flag (or None); the client's norm average is updated."""
        return _jump(self.norm_avg, client, norm, self.norm_jump, "norm")

    def loss_flag(self, client: str, loss: float) -> str | None:
        if not np.isfinite(loss):
            return None
        return _jump(self.loss_avg, client, loss, self.loss_jump, "training loss")

    def state(self) -> dict[str, dict[str, float]]:
        return {"reputation": self.scores, "norm_avg": self.norm_avg,
                "loss_avg": self.loss_avg}


def _jump(averages: dict[str, float], client: str, value: float, factor: float,
          what: str) -> str | None:
    avg = averages.get(client)
    averages[client] = value if avg is None else 0.7 * avg + 0.3 * value
    if avg is not None and avg > 0 and value > factor * avg:
        return f"{what} jump: {value:.3g} > {factor:g}× its average {avg:.3g}"
    return None
