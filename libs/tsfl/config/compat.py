"""Checks a spec against what the algorithm packages can do (a codec chain
:mod:`tsfl.compress` parses, SecAgg+ and HE parameters :mod:`tsfl.secagg` and
:mod:`tsfl.he` derive): the one config module that imports them, lazily, so that config
stays importable without them and they never import config back."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tsfl.config.job import JobSpec


def check_codec_chain(chain: list[str]) -> None:
    """An uplink codec chain :class:`tsfl.compress.CodecChain` parses (else ValueError)."""
    from tsfl.compress import CodecChain, CodecError

    try:
        CodecChain.parse(chain)
    except CodecError as exc:
        raise ValueError(str(exc)) from None


def check_secagg(spec: JobSpec) -> None:
    """A SecAgg+ job: a cohort the protocol can protect, a threshold above k/2, a ring
    and (k, t) that :mod:`tsfl.secagg.params` can derive."""
    from tsfl.secagg.params import derive
    from tsfl.secagg.ring import RingSpec

    s, n = spec.crypto.secagg, spec.clients.per_round
    if n < 3:
        raise ValueError("crypto.mode 'secagg' needs clients.per_round ≥ 3: with "
                         "fewer, the sum of the others reveals each update")
    if s.threshold_fraction is not None and s.threshold_fraction < 0.5:
        raise ValueError(
            f"crypto.secagg.threshold_fraction {s.threshold_fraction} makes the Shamir "
            "threshold t ≤ k/2: a server that splits the unmask request (some neighbours "
            "asked for b_u, the others for s_u) rebuilds both secrets of a client and "
            "its input; use at least 0.5, or leave it unset (t is derived from "
            "corruption, dropout and security_bits)")
    if spec.simulation.dropout > s.dropout:
        raise ValueError(
            f"simulation.dropout {spec.simulation.dropout} exceeds "
            f"crypto.secagg.dropout {s.dropout}: devices abort a round that keeps "
            "fewer than ⌈(1 − δ)n⌉ clients; raise crypto.secagg.dropout")
    try:
        RingSpec(s.clip, s.quant_bits, n)
        derive(n, s.corruption, s.dropout, s.security_bits, None, s.threshold_fraction)
    except ValueError as exc:
        raise ValueError(f"crypto.secagg: {exc}") from None


def check_he(spec: JobSpec) -> None:
    """An HE job: a downlink and keying the encrypted model allows, and CKKS (or
    threshold) parameters :mod:`tsfl.he` can choose for it."""
    from tsfl.he import HeError, choose_params

    if spec.compression.downlink == "delta":
        raise ValueError("compression.downlink 'delta' with crypto.mode 'he': the "
                         "encrypted part of the model changes entirely each round; use "
                         "downlink full")
    h = spec.crypto.he
    if h.keying == "threshold" and spec.clients.start_at != spec.clients.count:
        raise ValueError("clients.min_enrolled with threshold HE keying: every one of "
                         "clients.count silos holds a key share, made in a ceremony "
                         "before round 1; leave min_enrolled unset")
    try:
        if h.keying == "shared":
            choose_params(h.precision, h.value_bound, spec.clients.per_round,
                          security=h.security, poly_degree=h.poly_degree)
            return
        from tsfl.he.job import threshold_params

        if h.threshold is not None and h.threshold > spec.clients.count:
            raise HeError("params", f"threshold {h.threshold} exceeds the "
                                    f"{spec.clients.count} silos (clients.count)")
        threshold_params(spec)
    except HeError as exc:
        raise ValueError(f"crypto.he: {exc}") from None
