"""WFAgg (Cajaraville-Aboy, Fernández-Vilas, Díaz-Redondo & Fernández-Veiga, "Byzantine-
Robust Aggregation for Securing Decentralized Federated Learning", arXiv 2409.17754),
adapted from a decentralised node to a server.

Three filters score each of the round's n updates (f: the assumed number of Byzantine
clients):

- **WFAgg-D**, distance: the coordinate-wise median m of the updates; the n − f − 1
  updates with the smallest ‖xᵢ − m‖₂ pass.
- **WFAgg-C**, cosine: the same count with the smallest cosine distance 1 − cos(xᵢ, m).
- **WFAgg-T**, temporal: each client's drift between its consecutive updates, in
  distance δᵢ = ‖xᵢᵗ − xᵢᵗ⁻¹‖ and in cosine γᵢ = 1 − cos(xᵢᵗ, xᵢᵗ⁻¹), must stay inside a
  band around its moving average: |δ − μ_δ| ≤ max(k·σ_δ, r·μ_δ), likewise for γ, where μ
  and σ² are exponential moving averages (weight ``ema``) over the client's past drifts.
  A client with fewer than ``min_history`` drifts passes (nothing to compare yet).

WFAgg-E combines them: sᵢ = 0.4·Dᵢ + 0.4·Cᵢ + 0.2·Tᵢ, and an update is accepted when
sᵢ ≥ 0.6 — it must pass at least two filters, one of them D or C. The accepted updates
are averaged with votes sᵢ·nᵢ. The paper's final smoothing blends a node's own model with
the filtered aggregate, w ← α·w_own + (1 − α)·w_agg; on a server the "own" model is the
current global model, so the step is the mean delta scaled by (1 − α) (``smoothing`` α,
0 by default: FedAvg's full server step).

Client history persists (:meth:`ClientHistory.to_bytes`), so a restarted service keeps
it. Past updates are kept as count-sketches (a seeded random-sign hash of each coordinate
into ``sketch_size`` buckets; Charikar et al. 2002): inner products, hence distances and
cosines, are preserved in expectation at O(k) memory per client; models no larger than
the sketch are kept exactly.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from tsfl.robust import geometry
from tsfl.robust.aggregators import (
    RobustAggregator,
    RobustResult,
    _examples,
    malicious_bound,
    weighted_mean,
)


@dataclass
class ClientRecord:
    sketch: np.ndarray  # the client's last update, sketched
    drifts: int = 0  # drifts seen
    mean_d: float = 0.0
    var_d: float = 0.0
    mean_c: float = 0.0
    var_c: float = 0.0


class ClientHistory:
    """Per-client last update (sketched) and moving drift statistics."""

    def __init__(self, sketch_size: int = 1024, seed: int = 0x5EED):
        self.sketch_size = sketch_size
        self.seed = seed
        self.clients: dict[str, ClientRecord] = {}
        self._hash: tuple[int, np.ndarray, np.ndarray] | None = None

    def sketch(self, x: np.ndarray) -> np.ndarray:
        d = x.shape[0]
        if d <= self.sketch_size:
            return x.astype(np.float32, copy=True)
        hashed = self._hash
        if hashed is None or hashed[0] != d:
            rng = np.random.default_rng(self.seed)
            buckets = np.asarray(rng.integers(0, self.sketch_size, d))
            signs = np.asarray(rng.integers(0, 2, d), dtype=np.float32) * 2 - 1
            hashed = self._hash = (d, buckets, signs)
        _, buckets, signs = hashed
        return np.bincount(buckets, weights=x * signs, minlength=self.sketch_size
                           ).astype(np.float32)

    def to_bytes(self) -> bytes:
        ids = sorted(self.clients)
        buf = io.BytesIO()
        np.savez_compressed(
            buf, ids=np.array(ids, dtype=object).astype(str),
            sketch_size=np.array(self.sketch_size), seed=np.array(self.seed),
            sketches=np.stack([self.clients[c].sketch for c in ids]) if ids
            else np.zeros((0, 0), np.float32),
            stats=np.array([[self.clients[c].drifts, self.clients[c].mean_d,
                             self.clients[c].var_d, self.clients[c].mean_c,
                             self.clients[c].var_c] for c in ids], dtype=np.float64))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientHistory:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            out = cls(int(z["sketch_size"]), int(z["seed"]))
            for i, cid in enumerate(z["ids"]):
                st = z["stats"][i]
                out.clients[str(cid)] = ClientRecord(z["sketches"][i].copy(), int(st[0]),
                                                     *map(float, st[1:]))
        return out


class WFAgg(RobustAggregator):
    name = "wfagg"

    def __init__(self, num_malicious: int, *, history: ClientHistory | None = None,
                 weights: tuple[float, float, float] = (0.4, 0.4, 0.2),
                 threshold: float = 0.6, band_k: float = 2.0, band_ratio: float = 0.5,
                 ema: float = 0.3, min_history: int = 2, smoothing: float = 0.0):
        if not 0.0 <= smoothing < 1.0 or not 0.0 < ema <= 1.0:
            raise ValueError("smoothing must be in [0, 1) and ema in (0, 1]")
        self.f = malicious_bound(num_malicious)
        self.history = history if history is not None else ClientHistory()
        self.w_d, self.w_c, self.w_t = weights
        self.threshold = threshold
        self.band_k, self.band_ratio = band_k, band_ratio
        self.ema, self.min_history, self.smoothing = ema, min_history, smoothing

    def _keep(self, values: np.ndarray) -> np.ndarray:
        n = len(values)
        k = max(1, n - self.f - 1)
        keep = np.zeros(n)
        keep[np.argsort(values, kind="stable")[:k]] = 1.0
        return keep

    def temporal(self, clients: list[str], x: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
        """WFAgg-T: pass (1/0), distance drift and cosine drift per update; the history
        is updated with this round's updates."""
        n = len(x)
        passed, drift_d, drift_c = np.ones(n), np.full(n, np.nan), np.full(n, np.nan)
        for i, cid in enumerate(clients):
            s = self.history.sketch(x[i])
            rec = self.history.clients.get(cid)
            if rec is None:
                self.history.clients[cid] = ClientRecord(s)
                continue
            dd = float(np.linalg.norm(s - rec.sketch))
            dc = geometry.cosine_distance(s, rec.sketch)
            drift_d[i], drift_c[i] = dd, dc
            if rec.drifts >= self.min_history:
                ok_d = abs(dd - rec.mean_d) <= max(self.band_k * rec.var_d ** 0.5,
                                                   self.band_ratio * rec.mean_d)
                ok_c = abs(dc - rec.mean_c) <= max(self.band_k * rec.var_c ** 0.5,
                                                   self.band_ratio * rec.mean_c)
                passed[i] = float(ok_d and ok_c)
            a = self.ema if rec.drifts else 1.0
            for attr, v in (("d", dd), ("c", dc)):
                mean, var = getattr(rec, f"mean_{attr}"), getattr(rec, f"var_{attr}")
                new_mean = (1 - a) * mean + a * v
                new_var = (1 - a) * (var + a * (v - mean) ** 2) if rec.drifts else 0.0
                setattr(rec, f"mean_{attr}", new_mean)
                setattr(rec, f"var_{attr}", new_var)
            rec.drifts += 1
            rec.sketch = s
        return passed, drift_d, drift_c

    def aggregate(self, updates: np.ndarray, num_examples: np.ndarray | None = None,
                  clients: list[str] | None = None) -> RobustResult:
        x = geometry.stack(updates)
        self._check(x, 1)
        n = len(x)
        clients = clients if clients is not None else [str(i) for i in range(n)]
        if len(clients) != n:
            raise ValueError("one client id per update")
        med = np.median(x, axis=0)
        dist = geometry.distances_to(x, med)
        cos = geometry.cosine_distances_to(x, med)
        d_pass, c_pass = self._keep(dist), self._keep(cos)
        t_pass, drift_d, drift_c = self.temporal(clients, x)
        score = self.w_d * d_pass + self.w_c * c_pass + self.w_t * t_pass
        accepted = score >= self.threshold - 1e-12
        weights = np.where(accepted, score, 0.0)
        scale = np.full(n, 1.0 - self.smoothing)
        reasons = []
        for i in range(n):
            failed = [name for name, p in (("distance", d_pass[i]), ("cosine", c_pass[i]),
                                           ("temporal", t_pass[i])) if not p]
            head = "accepted" if accepted[i] else "refused"
            reasons.append(f"{head}: score {score[i]:.1f}" +
                           (f", failed {'/'.join(failed)}" if failed else ""))
        votes = weights * _examples(n, num_examples)
        return RobustResult(weighted_mean(x, votes, scale), weights, scale,
                            {"distance": d_pass, "cosine": c_pass, "temporal": t_pass,
                             "score": score, "median_distance": dist,
                             "median_cosine": cos, "drift_distance": drift_d,
                             "drift_cosine": drift_c}, reasons)
