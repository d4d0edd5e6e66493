"""SecAgg+ in a simulation: the devices' identities and what summary.json reports."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tsfl.config import JobSpec
from tsfl.identity import DeviceIdentity, IdentityAuthority
from tsfl.sdk.secagg import SecAggDevice


def secagg_devices(spec: JobSpec, client_ids: Iterable[str],
                   authority: IdentityAuthority | None = None) -> dict[str, SecAggDevice]:
    """A certified identity per simulated device and the authority it trusts — a fresh
    one per run unless given, held by the devices' side only (the coordinator never
    sees its private key). Simulated devices take the job's threat model as their floor;
    a real device sets its own (:class:`~tsfl.sdk.secagg.SecAggDevice`)."""
    ca = authority or IdentityAuthority.generate()
    s = spec.crypto.secagg
    return {cid: SecAggDevice(DeviceIdentity.enrol(cid, ca), [ca.public_key],
                              min_corruption=s.corruption, min_security_bits=s.security_bits,
                              max_dropout=max(s.dropout, 0.5))
            for cid in client_ids}


def secagg_summary(spec: JobSpec, metrics: list[dict[str, Any]], size: int
                   ) -> dict[str, Any]:
    """summary.json's ``crypto`` for SecAgg+: the threat model and the graph it derives,
    the ring, the masked bytes against the float32 bytes of the same updates, and how
    rounds coped with dropouts."""
    from tsfl.secagg.params import derive
    from tsfl.secagg.ring import RingSpec

    s = spec.crypto.secagg
    n = spec.clients.per_round
    ring = RingSpec(s.clip, s.quant_bits, n)
    graph = derive(n, s.corruption, s.dropout, s.security_bits, None, s.threshold_fraction)
    masked = [m.get("codecs", {}).get("secagg", {"updates": 0, "bytes": 0}) for m in metrics]
    updates = sum(c["updates"] for c in masked)
    nbytes = sum(c["bytes"] for c in masked)
    return {"mode": "secagg",
            "parameters": {"protocol": "SecAgg+ (Bell et al. 2020), active-server rounds "
                                       "(Bonawitz et al. 2017)",
                           "clip": s.clip, "quant_bits": s.quant_bits,
                           "ring_bits": ring.ring_bits, "corruption": s.corruption,
                           "dropout": s.dropout, "security_bits": s.security_bits,
                           "neighbours": graph.neighbours, "threshold": graph.threshold,
                           "key_agreement": s.key_agreement, "metrics": list(s.metrics),
                           "weight_unit": s.weight_unit,
                           "stage_timeout_s": s.stage_timeout_s},
            "bytes_up": sum(m["bytes_up"] for m in metrics),
            "masked_bytes_up": nbytes,
            "expansion": nbytes / (4 * size * updates) if updates else None,
            "dropped": sum(m["dropped"] for m in metrics),
            "failed_rounds": sum(1 for m in metrics if m["clients"] == 0)}
