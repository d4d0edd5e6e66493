"""What the coordinator derives from a job spec for its devices and stages: where updates
go, what each task says (compression, local DP, SecAgg+ parameters), how cohorts are
drawn. Pure functions of the spec."""

from __future__ import annotations

from typing import Any

from tsfl.bus import topics
from tsfl.compress import CodecChain, CodecError
from tsfl.config import JobSpec
from tsfl.pipeline.credentials import session_hash
from tsfl.privacy.plan import build_plan
from tsfl.secagg.extras import Extras
from tsfl.secagg.ring import RingSpec
from tsfl.secagg.round import RoundConfig, round_id_for


def ingest_topic(spec: JobSpec) -> str:
    """Where an accepted update goes: the he service for HE jobs; the privacy stage when
    the server clips (central DP); otherwise straight to the byzantine stage and the
    aggregator, or to the aggregator alone when no robust rule judges it (one broker hop
    fewer, and one read of the payload fewer)."""
    if spec.crypto.mode == "he":
        return topics.UPDATES_ENCRYPTED
    if spec.privacy.mode == "central":
        return topics.UPDATES_RAW
    return topics.screened_topic(spec.robust.aggregator)


def uplink_config(spec: JobSpec) -> dict[str, Any] | None:
    """The compression settings sent with every task (None: plain float32, say nothing)."""
    c = spec.compression
    u = c.uplink
    if u.chain == ["f32"] and c.skip_below == 0 and c.adaptive is None:
        return None
    return {"chain": list(u.chain), "ratio": u.ratio, "block": u.block, "levels": u.levels,
            "error_feedback": u.error_feedback, "skip_below": c.skip_below}


def adaptive_request(spec: JobSpec, model_size: int) -> dict[str, Any] | None:
    """What the selector needs to plan per-device codecs for a round (None: not adaptive)."""
    a = spec.compression.adaptive
    if a is None:
        return None
    lossless = CodecChain.parse(spec.compression.uplink.chain).lossless
    return {"budget_s": spec.round.deadline_s * a.deadline_fraction, "n": model_size,
            "min_ratio": a.min_ratio, "block": spec.compression.uplink.block,
            "lossless": lossless}


def plan_entry(raw: Any) -> dict[str, Any] | None:
    """A selector's codec choice for one device, checked (None when unusable)."""
    if not isinstance(raw, dict):
        return None
    try:
        chain = CodecChain.parse(raw.get("chain") or [])
        ratio = float(raw.get("ratio", 1.0))
    except (CodecError, TypeError, ValueError):
        return None
    if not 0 < ratio <= 1:
        return None
    return {"chain": list(chain.names), "ratio": ratio}


def poisson_rate(spec: JobSpec) -> float | None:
    """The per-client inclusion probability of a central-DP job with Poisson sampling."""
    p = spec.privacy
    if p.mode == "central" and p.sampling == "poisson":
        return spec.clients.per_round / spec.clients.count
    return None


def secret_cohorts(spec: JobSpec) -> bool:
    """Whether the job's cohorts are drawn from a CSPRNG: every DP job but a seeded
    (reproducible, not private) simulation."""
    return spec.private and not spec.seeded_privacy


def local_dp_config(spec: JobSpec, model_size: int) -> dict[str, Any] | None:
    """The job's local-DP settings as each task states them, or None. A device holds them
    against its own floor and ledger, draws the noise itself and derives the sensitivity
    itself: no seed, noise mode or sensitivity is sent."""
    plan = build_plan(spec, model_size)
    if plan is None or plan.mode != "local":
        return None
    return {"mechanism": plan.mechanism, "clip_norm": plan.clip_norm,
            "noise_multiplier": plan.noise_multiplier, "epsilon": plan.event.epsilon,
            "delta": plan.delta, "target_epsilon": plan.target_epsilon}


def secagg_extras(spec: JobSpec) -> Extras:
    """The ring coordinates after the update that carry n and the metrics."""
    s = spec.crypto.secagg
    return Extras(s.quant_bits, tuple(s.metrics), s.metric_clip)


def secagg_round_config(job_id: str, spec: JobSpec, number: int, cohort: list[str],
                        size: int) -> RoundConfig:
    """The public parameters of a SecAgg+ round: every party derives them alike ((k, t)
    from the threat model; the graph seed later, from the signed advertisements).
    Raises ``ValueError`` when no graph fits this cohort."""
    s = spec.crypto.secagg
    return RoundConfig.build(round_id_for(job_id, number), cohort,
                             RingSpec(s.clip, s.quant_bits, len(cohort)),
                             size + secagg_extras(spec).width, corruption=s.corruption,
                             dropout=s.dropout, security_bits=s.security_bits,
                             threshold_fraction=s.threshold_fraction,
                             key_agreement=s.key_agreement)


def secagg_task_config(config: RoundConfig, spec: JobSpec) -> dict[str, Any]:
    s = spec.crypto.secagg
    return {"round_id": config.round_id.hex(), "cohort": list(config.cohort),
            "ring": {"clip": config.ring.clip, "quant_bits": config.ring.quant_bits,
                     "clients": config.ring.clients},
            "size": config.size - secagg_extras(spec).width,
            "neighbours": config.neighbours, "threshold": config.threshold,
            "corruption": config.corruption, "dropout": config.dropout,
            "security_bits": config.security_bits,
            "threshold_fraction": config.threshold_fraction,
            "key_agreement": config.key_agreement, "metrics": list(s.metrics),
            "metric_clip": s.metric_clip, "weight_unit": s.weight_unit}


token_hash = session_hash  # the stored form of a session token


def rounds_to_run(spec: JobSpec) -> int:
    """The rounds a job runs: an asynchronous job's releases (``strategy.fedbuff.releases``,
    default ``rounds``), else ``rounds``."""
    if spec.strategy.mode == "async":
        return spec.strategy.fedbuff.releases or spec.rounds
    return spec.rounds
