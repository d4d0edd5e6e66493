"""One round's verdicts: sanity checks, the robust rule, reputation (library code; the
byzantine stage only wires it to the bus and the database).

1. Sanity checks (:func:`tsfl.robust.anomaly.sanity_flags`) refuse updates opposed to
   the round's median or far larger than its typical norm.
2. The rule judges the rest, with its assumed number of Byzantine clients reduced by
   those already refused (f′ = max(0, f − refused)): a count-based filter then drops
   only the attackers it has not been shown yet, not honest clients in their place.
3. Reputation: a client whose reputation is below the threshold is refused; every
   client's reputation then moves with its acceptance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tsfl.config import RobustSpec
from tsfl.robust.anomaly import Reputation, sanity_flags
from tsfl.robust.build import build_robust
from tsfl.robust.wfagg import ClientHistory


def judge_round(spec: RobustSpec, history: ClientHistory, reputation: Reputation,
                clients: list[str], x: np.ndarray, examples: np.ndarray,
                root_update: np.ndarray | None = None,
                losses: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Verdicts (client, weight, scale, reason, scores, flags) for the round's updates
    (``root_update``: FLTrust's server update for the round)."""
    n = len(clients)
    if n == 0:
        return []
    sanity = sanity_flags(x, spec.min_cosine, spec.max_norm_ratio)
    keep = [i for i in range(n) if sanity[i] is None]
    weights, scale = np.zeros(n), np.ones(n)
    reasons = [f"refused: {s}" if s else "" for s in sanity]
    scores: list[dict[str, float]] = [{} for _ in range(n)]
    if keep:
        f = max(0, spec.num_malicious - (n - len(keep)))
        rule = build_robust(spec.model_copy(update={"num_malicious": f}), history,
                            root_update)
        assert rule is not None
        sub = x[keep]
        if rule.name == "wfagg":
            result = rule.aggregate(sub, examples[keep],  # type: ignore[call-arg]
                                    clients=[clients[i] for i in keep])
        elif len(keep) >= 2 or rule.kind == "coordinate" or rule.name in ("norm_bounding",
                                                                           "fltrust"):
            result = rule.aggregate(sub, examples[keep])
        else:  # one update left: nothing to compare it with
            result = None
        for j, i in enumerate(keep):
            if result is None:
                weights[i], reasons[i] = 1.0, "accepted: the only sane update"
                continue
            weights[i], scale[i], reasons[i] = (result.weights[j], result.scale[j],
                                                result.reasons[j])
            scores[i] = {name: float(v[j]) for name, v in result.scores.items()
                         if np.isfinite(v[j])}
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    out = []
    for i, client in enumerate(clients):
        weight, reason = float(weights[i]), reasons[i]
        before = reputation.current(client)
        if weight > 0 and reputation.low(before):
            weight = 0.0
            reason = f"refused: reputation {before:.2f} < {reputation.threshold:g} ({reason})"
        rep = reputation.update(client, weight > 0)
        jumps = [f for f in (reputation.norm_flag(client, float(norms[i])),
                             reputation.loss_flag(client, float(losses[i]))
                             if losses is not None else None) if f]
        out.append({"client": client, "weight": weight, "scale": float(scale[i]),
                    "reason": "; ".join([reason, *jumps]),
                    "scores": {**scores[i], "reputation": rep, "norm": float(norms[i])},
                    "flags": [f for f in (sanity[i], *jumps) if f]})
    return out
