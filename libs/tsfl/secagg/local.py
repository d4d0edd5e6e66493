"""Run one SecAgg+ round in this process: every client and the server, messages passed
directly. What the coordinator will drive over gRPC; used by tests and the benchmark."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tsfl.secagg.protocol import RoundConfig, SecAggClient, SecAggServer

STAGES = ("advertise", "share", "masked", "unmask")


def run_round(config: RoundConfig, inputs: Mapping[str, np.ndarray],
              seeds: Mapping[str, int], drop: Mapping[str, set[str]] | None = None
              ) -> tuple[np.ndarray, list[str]]:
    """The exact ring sum of the survivors' quantized inputs, and the survivors.

    ``drop[stage]``: clients that vanish before sending that stage's message.
    """
    drop = drop or {}
    gone: set[str] = set()

    def alive(stage: str) -> list[str]:
        gone.update(drop.get(stage, set()))
        return [c for c in config.cohort if c not in gone]

    server = SecAggServer(config)
    clients = {c: SecAggClient(c, config) for c in config.cohort}
    for c in alive("advertise"):
        server.receive_keys(c, *clients[c].advertise())
    for c in alive("share"):
        server.receive_shares(c, clients[c].share_keys(dict(server.public_keys)))
    for c in alive("masked"):
        rng = np.random.default_rng(seeds[c])
        server.receive_masked(c, clients[c].masked_input(inputs[c], server.shares_for(c),
                                                         rng))
    survivors, dropped = server.unmask_request()
    for c in alive("unmask"):
        if c in survivors:
            server.receive_unmask(c, clients[c].unmask(survivors, dropped))
    return server.result()
