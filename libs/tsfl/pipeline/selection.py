"""Cohort selection."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xxhash


class UniformSelector:
    """Each round, k clients drawn uniformly without replacement (seeded per round)."""

    def __init__(self, seed: int):
        self.seed = seed

    def select(self, round_number: int, available: Sequence[str], k: int) -> list[str]:
        if k > len(available):
            raise ValueError(f"cannot select {k} of {len(available)} available clients")
        rng = np.random.default_rng([self.seed, round_number, 0x5E1EC7])
        picks = rng.choice(len(available), size=k, replace=False)
        return [available[i] for i in picks]


def client_seed(job_seed: int, round_number: int, client_id: str) -> int:
    """The local-training seed handed to a client with its task (same in both deployments)."""
    ident = xxhash.xxh3_64_intdigest(client_id.encode())
    return int(np.random.default_rng([job_seed, round_number, ident]).integers(2**63))
