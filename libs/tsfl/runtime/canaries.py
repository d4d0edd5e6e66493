"""An empirical privacy audit of a job: run it once with canary clients, bound ε from below.

One-run auditing (Steinke, Nasr & Jagielski, NeurIPS 2023; the statistics are
:mod:`tsfl.privacy.audit`) with random-direction canary clients (Andrew et al., "One-shot
Empirical Privacy Estimation for Federated Learning", ICLR 2024):

- **Canaries.** m extra clients, each with a fixed random direction uᵢ (a unit L2 vector
  in model space from a seeded generator, public to the auditor) and each *included*
  independently with probability ½ (the secret). An included canary that is selected
  uploads C·uᵢ/‖uᵢ‖ — the job's clip norm C, in the norm the mechanism's sensitivity is
  measured in, so the server's clipping leaves it as it is: the largest update any client
  may contribute, in a direction nothing else favours.
- **Population and sampling rate.** The audited job's ``clients.count`` is n + m (the
  honest clients plus every canary) and ``clients.per_round`` grows with it,
  round(k·(n + m)/n), so the sampling rate q = k/n of the job is kept (exactly, when
  k·m/n is whole). The accountant, the selector and the calibration all read that spec,
  so they see the same population and the same q, and the accounted ε is the job's.
  That population does *not* depend on the secret: q never changes with which canaries
  are in, so changing one canary's inclusion is exactly one neighbouring step of the
  accounted mechanism —
  * central DP, Poisson sampling (add/remove one client): an excluded canary is absent
    (never registered, so never sampled or counted); the registered devices, n + m_in,
    are each sampled at rate q (the rate Poisson sampling credits, whatever their number);
  * central DP, fixed-size sampling (replace one client): an excluded canary is a
    registered device with nothing to say (a zero update), so the population stays n + m
    and in/out replaces one client's update by another's;
  * local DP (any two inputs of one device): every canary is a registered device; in, its
    update is C·uᵢ; out, zero (``absent="zero"``, the device had no data) or −C·uᵢ
    (``absent="opposite"``, the two ends of the clipping ball's diameter, the pair the
    sensitivity 2C is computed for: the tightest audit).
- **The adversary and the score.** Central DP: whoever sees the released models (the run's
  checkpoints, read back from its database), with two statistics (:func:`central_scores`):
  ``sum``, sᵢ = Σ_r ⟨θ_r − θ_{r−1}, uᵢ⟩ over the released rounds (= ⟨θ_R − θ_0, uᵢ⟩),
  and ``llr``, the per-round likelihood ratio of a Poisson-sampled canary. Local DP: the
  server, which sees every upload and who sent it (tapped as the coordinator receives
  it): with tᵢ the canary's uploads and a_in, a_out the projections of its two possible
  inputs on uᵢ,
  sᵢ = Σ_uploads ⟨yₜ, uᵢ⟩ − tᵢ·(a_in + a_out)/2 — the Gaussian log-likelihood ratio of
  "in" against "out" up to a positive factor, so a canary never picked scores 0 (between
  the two groups) and canaries picked more often weigh more. Which canaries are picked
  does not depend on the secret, so a server knowing it learns nothing from it.
- **Guesses.** "In" for the k₊ highest scores, "out" for the k₋ lowest; the bound is the
  best over the statistics × :func:`tsfl.privacy.audit.default_choices`, Bonferroni-
  corrected.

Record-level DP-SGD (canary *records* inside a silo's data) is not audited here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from tsfl.config import JobSpec
from tsfl.core.layout import ParamLayout
from tsfl.errors import TsflError
from tsfl.privacy.audit import BETA, audit
from tsfl.runtime.audit_report import PrivacyAudit
from tsfl.runtime.embedded import RoundCallback, run_embedded
from tsfl.runtime.simulation import Federation, build_federation
from tsfl.sdk.client import TorchClient
from tsfl.wire.envelope import WireError
from tsfl.wire.messages import decode_update

CANARY_PREFIX = "canary-"
#: stream ids mixed into the audit seed
INCLUSION_STREAM = 0xA0D17
DIRECTION_STREAM = 0xD12EC7
DEVICE_STREAM = 0xDE7CA

_NORMS = {"gaussian": "l2", "laplace": "l1", "staircase": "linf"}

#: an adversary's view of an upload: (client id, round, delta as received) → what it scores
Adversary = Callable[[str, int, np.ndarray], np.ndarray]


class AuditError(TsflError, ValueError):
    """The job cannot be audited this way (the message says why)."""


def canary_name(index: int) -> str:
    return f"{CANARY_PREFIX}{index:05d}"


def _norm_of(vector: np.ndarray, norm: str) -> float:
    if norm == "l1":
        return float(np.abs(vector).sum())
    if norm == "linf":
        return float(np.abs(vector).max())
    return float(np.linalg.norm(vector))


@dataclass(frozen=True)
class CanarySet:
    """m canaries: their secret inclusion bits and public directions."""

    count: int
    seed: int
    size: int  # model parameters
    clip_norm: float
    norm: str  # the mechanism's: l2 | l1 | linf
    included: np.ndarray  # bool, (m,)

    @classmethod
    def draw(cls, count: int, seed: int, size: int, clip_norm: float, norm: str
             ) -> CanarySet:
        included = np.random.default_rng([seed, INCLUSION_STREAM]).random(count) < 0.5
        return cls(count, seed, size, clip_norm, norm, included)

    @property
    def ids(self) -> list[str]:
        return [canary_name(i) for i in range(self.count)]

    def direction(self, index: int) -> np.ndarray:
        """uᵢ: a unit L2 vector, uniformly random on the sphere (float64)."""
        g = np.random.default_rng([self.seed, DIRECTION_STREAM, index]).standard_normal(
            self.size)
        return g / np.linalg.norm(g)

    def delta(self, index: int) -> np.ndarray:
        """An included canary's update: uᵢ scaled to norm C in the mechanism's norm."""
        u = self.direction(index)
        return (self.clip_norm / _norm_of(u, self.norm) * u).astype(np.float32)

    def projection(self, index: int) -> float:
        """⟨delta(i), uᵢ⟩: how far an included canary's update reaches along uᵢ."""
        u = self.direction(index)
        return self.clip_norm / _norm_of(u, self.norm)


class CanaryClient:
    """A canary device: whatever the model, its update is ``delta`` (zero: an excluded
    canary with nothing to say). It trains on nothing and reports one example."""

    def __init__(self, layout: ParamLayout, delta: np.ndarray | None, privacy: Any = None):
        self._layout = layout
        self._delta = delta
        if privacy is not None:  # the device's own DP randomness (local DP)
            self.privacy = privacy

    @property
    def layout(self) -> ParamLayout:
        return self._layout

    def fit_vector(self, vector: np.ndarray, config: dict[str, Any]
                   ) -> tuple[np.ndarray, int, dict[str, float]]:
        out = np.array(vector, dtype=np.float32, copy=True)
        if self._delta is not None:
            out += self._delta
        return out, 1, {}

    def evaluate(self, parameters: Any, config: dict[str, Any]) -> Any:
        raise NotImplementedError("a canary does not evaluate")


def audited_spec(spec: JobSpec, honest: int, canaries: int) -> JobSpec:
    """``spec`` with the canaries in its population: count n + m, per_round scaled so the
    sampling rate k/n stays (rounded to a whole cohort)."""
    count = honest + canaries
    per_round = min(count, max(1, round(spec.clients.per_round * count / honest)))
    data = spec.model_dump(mode="json")
    data["clients"] = {**data["clients"], "count": count, "per_round": per_round}
    return JobSpec.model_validate(data)


def check_auditable(spec: JobSpec) -> None:
    """Raise :class:`AuditError` for a job this audit does not cover."""
    p = spec.privacy
    if p.mode == "none":
        if spec.training.dp_sgd is not None:
            raise AuditError("record-level DP-SGD (training.dp_sgd) is not audited: this "
                             "audit inserts canary clients, so it covers client-level "
                             "central and local DP (privacy.mode) only")
        raise AuditError("privacy.mode is 'none': there is no DP guarantee to audit")
    if spec.crypto.mode != "none":
        raise AuditError(f"crypto.mode {spec.crypto.mode!r} is not audited (canaries "
                         "support plain uploads only)")


class _TappedTransport:
    """The in-process transport, with every upload also shown to ``tap`` (the server's
    view: the bytes as the coordinator receives them)."""

    def __init__(self, inner: Any, tap: Callable[[str, bytes], None]):
        self._inner = inner
        self._tap = tap

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def upload(self, client_id: str, data: bytes) -> Any:
        self._tap(client_id, data)
        return await self._inner.upload(client_id, data)


class _UploadScores:
    """Local DP: Σ ⟨upload, uᵢ⟩ and the number of uploads, per canary."""

    def __init__(self, canaries: CanarySet, layout: ParamLayout,
                 adversary: Adversary | None):
        self.canaries = canaries
        self.layout = layout
        self.adversary = adversary
        self.index = {cid: i for i, cid in enumerate(canaries.ids)}
        self.sums = np.zeros(canaries.count)
        self.uploads = np.zeros(canaries.count, dtype=np.int64)

    def __call__(self, client_id: str, data: bytes) -> None:
        i = self.index.get(client_id)
        if i is None:
            return
        try:
            update = decode_update(data, self.layout)
        except WireError:
            return
        delta = update.delta.astype(np.float64)
        if self.adversary is not None:
            delta = np.asarray(self.adversary(client_id, update.round, delta), dtype=np.float64)
        self.sums[i] += float(delta @ self.canaries.direction(i))
        self.uploads[i] += 1


async def _released_models(database: Path, job_id: str) -> list[np.ndarray]:
    """Every model the job released (version 0 is the initial one), from its database."""
    from tsfl.storage.store import Store

    store = await Store.open(f"sqlite:///{database}")
    try:
        meta = await store.latest_checkpoint_meta(job_id)
        last = meta[0] if meta else 0
        out = []
        for version in range(last + 1):
            ckpt = await store.latest_checkpoint(job_id, version)
            if ckpt is not None:
                out.append(np.asarray(ckpt["vector"], dtype=np.float64))
        return out
    finally:
        await store.close()


def central_scores(canaries: CanarySet, models: list[np.ndarray], *, rate: float,
                   step: float) -> dict[str, np.ndarray]:
    """The central-DP adversary's two statistics, from the released models alone.

    With xᵢ,ᵣ = ⟨θ_r − θ_{r−1}, uᵢ⟩ over the released rounds:

    - ``sum``: sᵢ = Σ_r xᵢ,ᵣ (= ⟨θ_R − θ_0, uᵢ⟩);
    - ``llr``: Σ_r log(1 − q + q·exp((μᵢ·xᵢ,ᵣ − μᵢ²/2)/σ²)), the log-likelihood ratio of
      "in" against "out" when each round adds N(0, σ²) along uᵢ and, with probability
      q (the sampling rate), the canary's μᵢ = ``step``·⟨canary update, uᵢ⟩ (``step``:
      server learning rate / expected cohort). σ is the spread of all xᵢ,ᵣ (noise plus
      everything else that moves the model along random directions). A model of the
      round, not an assumption of the bound: any function of the releases is a valid
      score; this one keeps the rounds a canary was not sampled in from drowning the
      ones it was.
    """
    m = canaries.count
    if len(models) < 2:
        return {"sum": np.zeros(m), "llr": np.zeros(m)}
    deltas = np.diff(np.stack(models), axis=0)  # R × P
    x = np.empty((m, deltas.shape[0]))
    for i in range(m):
        x[i] = deltas @ canaries.direction(i)
    sigma = float(x.std()) or 1.0
    mu = step * np.array([canaries.projection(i) for i in range(m)])[:, None]
    a = (mu * x - mu * mu / 2) / sigma**2
    with np.errstate(divide="ignore"):
        llr = np.logaddexp(np.log1p(-rate) if rate < 1 else -np.inf, math.log(rate) + a)
    return {"sum": x.sum(axis=1), "llr": llr.sum(axis=1)}


def _registered(spec: JobSpec, canaries: CanarySet, absent: str, layout: ParamLayout,
                privacy: Callable[[int], Any] | None) -> dict[str, CanaryClient]:
    """The canary devices that enrol, by id (see the module docstring)."""
    out: dict[str, CanaryClient] = {}
    central_poisson = spec.privacy.mode == "central" and spec.privacy.sampling == "poisson"
    for i, cid in enumerate(canaries.ids):
        inside = bool(canaries.included[i])
        if inside:
            delta: np.ndarray | None = canaries.delta(i)
        elif central_poisson:
            continue  # absent: add/remove
        elif spec.privacy.mode == "local" and absent == "opposite":
            delta = -canaries.delta(i)
        else:
            delta = None  # a zero update: replace-one (fixed) or local "zero"
        out[cid] = CanaryClient(layout, delta, privacy(i) if privacy is not None else None)
    return out


def _seeded_device(spec: JobSpec, seed: int) -> Callable[[int], Any] | None:
    """Canary devices of a ``noise: seeded`` job draw reproducible noise, like the
    simulation's own devices (not private; simulation only)."""
    if spec.privacy.mode != "local" or spec.privacy.noise != "seeded":
        return None
    from tsfl.sdk.privacy_guard import DevicePrivacy

    def make(index: int) -> Any:
        return DevicePrivacy(simulation_seed=int(np.random.default_rng(
            [seed, DEVICE_STREAM, index]).integers(2**63)))

    return make


async def run_privacy_audit(spec: JobSpec, out_dir: Path, *, canaries: int = 1000,
                            seed: int | None = None, on_round: RoundCallback | None = None,
                            absent: str = "zero", beta: float = BETA,
                            choices: list[tuple[int, int]] | None = None,
                            device_privacy: Callable[[int], Any] | None = None,
                            adversary: Adversary | None = None,
                            federation: Federation | None = None) -> PrivacyAudit:
    """Run ``spec`` once with ``canaries`` canary clients and audit it.

    ``seed`` seeds the canaries (directions and inclusion; default: the job's seed).
    ``absent`` is local DP's "out" input (``zero`` or ``opposite``). ``device_privacy(i)``
    gives canary i its device privacy state (default: the simulation's rule), and
    ``adversary`` transforms each upload before the server scores it — both for tests
    that model a broken device. The run's outputs (``tsfl.db``) go to ``out_dir``.
    """
    check_auditable(spec)
    if canaries < 2:
        raise AuditError("an audit needs at least 2 canaries")
    if absent not in ("zero", "opposite"):
        raise AuditError(f"absent must be 'zero' or 'opposite', got {absent!r}")
    started = time.perf_counter()
    fed = federation or build_federation(spec)
    honest = len(fed.client_ids)
    layout = fed.workspace.layout
    run_spec = audited_spec(spec, honest, canaries)
    p = run_spec.privacy
    assert p.clip_norm is not None
    cset = CanarySet.draw(canaries, spec.seed if seed is None else seed, layout.total_size,
                          p.clip_norm, _NORMS[p.mechanism])
    privacy = device_privacy or _seeded_device(run_spec, cset.seed)
    devices = _registered(run_spec, cset, absent, layout, privacy)
    fed.client_ids = [*fed.client_ids, *devices]
    fed.clients.update(cast(dict[str, TorchClient], devices))  # canaries train like one
    notes = []
    if p.noise == "seeded":
        notes.append("noise: seeded — the run's noise is predictable from the job's seed "
                     "(simulation only); this audit's adversary does not use it")
    if spec.training.dp_sgd is not None:
        notes.append("training.dp_sgd: only the client-level guarantee is audited")
    if p.adaptive_clipping is not None:
        notes.append("adaptive clipping: canaries send norm C (the initial clip norm); "
                     "the server clips them to each round's C")

    tap: _UploadScores | None = None
    wrap = None
    if p.mode == "local":
        tap = _UploadScores(cset, layout, adversary)

        def wrap(transport: Any) -> Any:
            return _TappedTransport(transport, tap)

    result = await run_embedded(run_spec, out_dir, on_round=on_round, federation=fed,
                                wrap_transport=wrap)
    if p.mode == "central":
        models = await _released_models(result.database, result.job_id)
        step = float(getattr(run_spec.strategy, "server_lr", 1.0) or 1.0)
        scores = central_scores(cset, models, step=step / run_spec.clients.per_round,
                                rate=run_spec.clients.per_round / run_spec.clients.count)
        uploads = None
    else:
        assert tap is not None
        a_in = np.array([cset.projection(i) for i in range(cset.count)])
        a_out = -a_in if absent == "opposite" else np.zeros(cset.count)
        scores = {"sum": tap.sums - tap.uploads * (a_in + a_out) / 2}
        uploads = tap.uploads
    accounted = float(result.ledger[-1]["epsilon"]) if result.ledger else 0.0
    bound = audit(scores, cset.included, p.delta, beta, choices)
    return PrivacyAudit(result.spec, honest, cset, scores, uploads, bound, accounted, result,
                        absent, time.perf_counter() - started, notes)


def audit_privacy(spec: JobSpec, out_dir: Path, **kwargs: Any) -> PrivacyAudit:
    """:func:`run_privacy_audit`, run to completion in a fresh event loop."""
    return asyncio.run(run_privacy_audit(spec, out_dir, **kwargs))
