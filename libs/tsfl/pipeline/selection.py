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

    def poisson(self, round_number: int, available: Sequence[str], rate: float) -> list[str]:
        """Each client independently with probability ``rate`` (Poisson sampling, the
        sampling that DP-FedAvg's amplification bound assumes)."""
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"sampling rate must be in (0, 1], got {rate}")
        rng = np.random.default_rng([self.seed, round_number, 0x9015])
        keep = rng.random(len(available)) < rate
        return [c for c, k in zip(available, keep, strict=True) if k]


def client_seed(job_seed: int, round_number: int, client_id: str) -> int:
    """The local-training seed handed to a client with its task (same in both deployments)."""
    ident = xxhash.xxh3_64_intdigest(client_id.encode())
    return int(np.random.default_rng([job_seed, round_number, ident]).integers(2**63))
