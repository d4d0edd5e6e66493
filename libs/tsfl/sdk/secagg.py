"""The device side of a SecAgg+ round (``crypto.mode: secagg``), secure against an active
server.

The device trains as usual, then takes part in the five stages through its transport:
advertise its public keys, signed with its identity key; check every advertisement
against the identity authorities *it* trusts and derive the graph and the threshold
itself; share its secrets with its graph neighbours (sealed for them, routed by the
server); send ``(n / weight_unit) · Δ`` clipped, quantized into the ring — followed by
its example count and metrics as extra ring coordinates — and masked; sign the survivor
set; and answer the unmask request once t neighbours signed the same set. Each call
returns when the server has moved to the next stage. The server only ever learns the
cohort's sums. When a check fails the device stops, tells the coordinator why
(``DeclineTask``, code ``secagg_<check>``) and raises :class:`SecAggAbort`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tsfl.identity import DeviceIdentity
from tsfl.secagg.advert import Trust
from tsfl.secagg.client import SecAggClient
from tsfl.secagg.extras import Extras
from tsfl.secagg.keys import KEY_AGREEMENTS
from tsfl.secagg.params import SECURITY_BITS
from tsfl.secagg.ring import RingSpec, quantize
from tsfl.secagg.round import RoundConfig, SecAggRefusal, round_id_for


class SecAggTransport(Protocol):
    async def secagg(self, client_id: str, job_id: str, round_number: int, stage: str,
                     payload: dict[str, Any]) -> dict[str, Any]: ...

    async def decline(self, client_id: str, job_id: str, round_number: int, code: str,
                      message: str) -> None: ...


@dataclass
class SecAggDevice:
    """A device's SecAgg+ credentials and floor — its own configuration, never the
    server's: its identity, the authorities whose certificates it accepts, and the
    weakest threat model it takes part under (a round assuming fewer corrupt clients,
    weaker statistical security or more dropouts is refused)."""

    identity: DeviceIdentity | None = None
    trusted_authorities: Sequence[bytes] = ()
    min_corruption: float = 0.05
    min_security_bits: int = SECURITY_BITS
    max_dropout: float = 0.5
    trust: Trust = field(init=False)
    _rounds: set[bytes] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.trust = Trust(self.trusted_authorities)

    def begin(self, config: RoundConfig) -> None:
        """:meth:`check` the round, then remember it (a replay of it is refused)."""
        self.check(config)
        self._rounds.add(config.round_id)

    def check(self, config: RoundConfig) -> None:
        """Refuse a round below this device's floor, or one it already took part in."""
        if config.corruption < self.min_corruption:
            raise SecAggRefusal("floor", f"the round assumes γ = {config.corruption} "
                                         "corrupt clients; this device requires at least "
                                         f"{self.min_corruption}")
        if config.security_bits < self.min_security_bits:
            raise SecAggRefusal("floor", f"the round offers {config.security_bits}-bit "
                                         f"security; this device requires "
                                         f"{self.min_security_bits}")
        if config.dropout > self.max_dropout:
            raise SecAggRefusal("floor", f"the round lets δ = {config.dropout} of the "
                                         "cohort drop (a smaller crowd to hide in); this "
                                         f"device allows at most {self.max_dropout}")
        if config.round_id in self._rounds:
            raise SecAggRefusal("replay", "this device already took part in this round")


def round_config(raw: dict[str, Any], job_id: str, round_number: int,
                 device: SecAggDevice | None = None) -> tuple[RoundConfig, Extras, float]:
    """The task's ``secagg`` entry, checked (it came over the network) — against
    ``device``'s floor too when given: the round's configuration (update and extras), the
    extras' layout and the weight unit."""
    try:
        ring = RingSpec(float(raw["ring"]["clip"]), int(raw["ring"]["quant_bits"]),
                        int(raw["ring"]["clients"]))
        extras = Extras(ring.quant_bits, tuple(str(m) for m in raw.get("metrics", ())),
                        float(raw.get("metric_clip", 1000.0)))
        fraction = raw.get("threshold_fraction")
        agreement = str(raw.get("key_agreement", "x25519"))
        if agreement not in KEY_AGREEMENTS:
            raise ValueError(f"unknown key agreement {agreement!r}")
        config = RoundConfig(
            bytes.fromhex(raw["round_id"]), tuple(str(c) for c in raw["cohort"]), ring,
            int(raw["size"]) + extras.width, int(raw["neighbours"]), int(raw["threshold"]),
            float(raw["corruption"]), float(raw["dropout"]), int(raw["security_bits"]),
            None if fraction is None else float(fraction), agreement)  # type: ignore[arg-type]
        unit = float(raw["weight_unit"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SecAggRefusal("parameters", f"unusable secagg task config: {exc}") from None
    if config.round_id != round_id_for(job_id, round_number):
        raise SecAggRefusal("parameters", "the round id is not this job's and round's")
    if not unit > 0:
        raise SecAggRefusal("parameters", "secagg weight_unit must be positive")
    if device is not None:
        device.check(config)  # the floor first: it is cheap, deriving (k, t) is not
    config.check()
    return config, extras, unit


async def secure_upload(transport: SecAggTransport, client_id: str, job_id: str,
                        round_number: int, raw_config: dict[str, Any], delta: np.ndarray,
                        num_examples: int, metrics: dict[str, float], seed: int | None,
                        device: SecAggDevice) -> int:
    """Run the device's five stages for ``delta``; returns the bytes it sent. A refusal
    is reported to the coordinator before :class:`SecAggRefusal` propagates."""
    try:
        return await _stages(transport, client_id, job_id, round_number, raw_config, delta,
                             num_examples, metrics, seed, device)
    except SecAggRefusal as exc:
        with contextlib.suppress(Exception):  # best effort: the round may be over
            await transport.decline(client_id, job_id, round_number,
                                    f"secagg_{exc.code}", str(exc))
        raise


async def _stages(transport: SecAggTransport, client_id: str, job_id: str, round_number: int,
                  raw_config: dict[str, Any], delta: np.ndarray, num_examples: int,
                  metrics: dict[str, float], seed: int | None, device: SecAggDevice) -> int:
    config, extras, unit = round_config(raw_config, job_id, round_number, device)
    if device.identity is None:
        raise SecAggRefusal("identity", "this device has no identity (SecAggDevice("
                                        "identity=..., trusted_authorities=[...]))")
    if delta.size + extras.width != config.size:
        raise SecAggRefusal("parameters", f"the update has {delta.size} values, the round "
                                          f"{config.size - extras.width}")
    me = SecAggClient(client_id, config, device.identity, device.trust)
    device.begin(config)
    sent = 0

    async def stage(name: str, payload: dict[str, Any], size: int) -> dict[str, Any]:
        nonlocal sent
        sent += size
        return await transport.secagg(client_id, job_id, round_number, name, payload)

    ad = me.advertise()
    routed = await stage("advertise", ad, 64 + 64 + 128 + len(ad.get("ek", b"")))
    sealed = me.share_keys(dict(routed["ads"]), dict(routed.get("eks") or {}))
    shares = (await stage("share", {"sealed": sealed},
                          sum(len(b) for b in sealed.values())))["shares"]
    weighted = delta.astype(np.float64) * (num_examples / unit)
    rng = np.random.default_rng(None if seed is None else [int(seed), 0x5EC])
    codes = np.concatenate([quantize(weighted, config.ring, rng),
                            extras.encode(int(num_examples), metrics)])
    y = me.masked_input(codes, dict(shares))
    width = (config.ring.ring_bits + 7) // 8
    survivors = (await stage("masked", {"y": y}, y.size * width))["survivors"]
    signature = me.consistency([str(c) for c in survivors])
    signatures = (await stage("consistency", {"sig": signature}, 64))["signatures"]
    answer = me.unmask(dict(signatures))
    await stage("unmask", {"shares": answer}, 67 * len(answer))
    return sent
