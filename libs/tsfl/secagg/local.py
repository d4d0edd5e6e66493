"""Run one SecAgg+ round in this process: every client and the server, messages passed
directly. What the coordinator drives over gRPC; used by tests and the benchmark."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from tsfl.identity import DeviceIdentity, IdentityAuthority
from tsfl.secagg.advert import Trust
from tsfl.secagg.client import SecAggClient
from tsfl.secagg.ring import quantize
from tsfl.secagg.round import RoundConfig
from tsfl.secagg.server import SecAggServer

STAGES = ("advertise", "share", "masked", "consistency", "unmask")


def enrol(cohort: Iterable[str], authority: IdentityAuthority | None = None
          ) -> tuple[IdentityAuthority, dict[str, DeviceIdentity]]:
    """An identity authority (fresh unless given) and a certified identity per client."""
    ca = authority or IdentityAuthority.generate()
    return ca, {c: DeviceIdentity.enrol(c, ca) for c in cohort}


def clients_for(config: RoundConfig, identities: Mapping[str, DeviceIdentity],
                authority: bytes, trust: Trust | None = None) -> dict[str, SecAggClient]:
    """A client per cohort member, each with its own trust store — or all with
    ``trust``: simulated devices of one process may share the certificates already
    checked (a shortcut for large simulations; a benchmark keeps them apart)."""
    return {c: SecAggClient(c, config, identities[c], trust or Trust([authority]))
            for c in config.cohort}


def run_round(config: RoundConfig, inputs: Mapping[str, np.ndarray],
              seeds: Mapping[str, int], drop: Mapping[str, set[str]] | None = None, *,
              identities: Mapping[str, DeviceIdentity] | None = None,
              authority: IdentityAuthority | None = None, trust: Trust | None = None
              ) -> tuple[np.ndarray, list[str]]:
    """The exact ring sum of the survivors' quantized inputs, and the survivors.

    ``drop[stage]``: clients that vanish before sending that stage's message. Identities
    are enrolled with a fresh authority unless given; ``trust``: see :func:`clients_for`.
    """
    if identities is None or authority is None:
        authority, identities = enrol(config.cohort, authority)
    drop = drop or {}
    gone: set[str] = set()

    def alive(stage: str) -> list[str]:
        gone.update(drop.get(stage, set()))
        return [c for c in config.cohort if c not in gone]

    server = SecAggServer(config)
    clients = clients_for(config, identities, authority.public_key, trust)
    for c in alive("advertise"):
        server.receive_advert(c, clients[c].advertise())
    server.close_adverts()
    for c in alive("share"):
        routed = server.adverts_for(c)
        server.receive_shares(c, clients[c].share_keys(routed["ads"], routed["eks"]))
    for c in alive("masked"):
        codes = quantize(inputs[c], config.ring, np.random.default_rng(seeds[c]))
        server.receive_masked(c, clients[c].masked_input(codes, server.shares_for(c)))
    survivors = server.unmask_request()
    for c in alive("consistency"):
        if c in survivors:
            server.receive_signature(c, clients[c].consistency(survivors))
    server.close_consistency()
    for c in alive("unmask"):
        if c in server.signatures:
            server.receive_unmask(c, clients[c].unmask(server.signatures_for(c)))
    return server.result()
