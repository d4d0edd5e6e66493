"""The device side of a SecAgg+ round (``crypto.mode: secagg``).

The device trains as usual, then takes part in the four stages through its transport:
advertise its two public keys; share its secrets with its graph neighbours (sealed for
them, routed by the server); send ``(n / weight_unit) · Δ`` clipped, quantized into the
ring and masked; and answer the server's unmask request for its neighbours. Each call
returns when the server has moved to the next stage. Nothing the device sends reveals
its update: the server only ever learns the cohort's sum.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from tsfl.secagg.protocol import RoundConfig, SecAggAbort, SecAggClient
from tsfl.secagg.ring import RingSpec


class SecAggTransport(Protocol):
    async def secagg(self, client_id: str, job_id: str, round_number: int, stage: str,
                     payload: dict[str, Any]) -> dict[str, Any]: ...


def round_config(raw: dict[str, Any]) -> RoundConfig:
    """The task's ``secagg`` entry, checked (it came over the network)."""
    try:
        ring = RingSpec(float(raw["ring"]["clip"]), int(raw["ring"]["quant_bits"]),
                        int(raw["ring"]["clients"]))
        cohort = tuple(str(c) for c in raw["cohort"])
        config = RoundConfig(bytes.fromhex(raw["round_id"]), cohort, ring, int(raw["size"]),
                             int(raw["neighbours"]), int(raw["threshold"]),
                             int(raw["graph_seed"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise SecAggAbort(f"unusable secagg task config: {exc}") from None
    if not 1 <= config.threshold <= config.neighbours < max(2, len(cohort)):
        raise SecAggAbort("secagg threshold and neighbours do not fit the cohort")
    return config


async def secure_upload(transport: SecAggTransport, client_id: str, job_id: str,
                        round_number: int, raw_config: dict[str, Any], delta: np.ndarray,
                        num_examples: int, metrics: dict[str, float], seed: int | None
                        ) -> int:
    """Run the device's four stages for ``delta``; returns the bytes it sent."""
    config = round_config(raw_config)
    if delta.size != config.size:
        raise SecAggAbort(f"the update has {delta.size} values, the round {config.size}")
    unit = float(raw_config.get("weight_unit") or 0)
    if not unit > 0:
        raise SecAggAbort("secagg weight_unit must be positive")
    me = SecAggClient(client_id, config)
    sent = 0

    async def stage(name: str, payload: dict[str, Any], size: int) -> dict[str, Any]:
        nonlocal sent
        sent += size
        return await transport.secagg(client_id, job_id, round_number, name, payload)

    c_pk, s_pk = me.advertise()
    keys = (await stage("advertise", {"c": c_pk, "s": s_pk}, 64))["keys"]
    sealed = me.share_keys({str(v): (bytes(k[0]), bytes(k[1])) for v, k in keys.items()})
    shares = (await stage("share", {"sealed": sealed},
                          sum(len(b) for b in sealed.values())))["shares"]
    weighted = delta.astype(np.float64) * (num_examples / unit)
    rng = np.random.default_rng(None if seed is None else [int(seed), 0x5EC])
    y = me.masked_input(weighted, dict(shares), rng)
    width = (config.ring.ring_bits + 7) // 8
    who = await stage("masked", {"y": y, "n": int(num_examples), "metrics": dict(metrics)},
                      y.size * width)
    answer = me.unmask(set(who["survivors"]), set(who["dropped"]))
    await stage("unmask", {"shares": answer}, 67 * len(answer))
    return sent
