"""Cohort selection.

Amplification by sampling (what DP-FedAvg's accounting credits) holds only while the
sample is secret from the adversary. A DP job's cohorts are therefore drawn from a
CSPRNG (``secure=True``: :class:`~tsfl.privacy.noise.SecureNoise` for Poisson sampling,
the OS's ``secrets.SystemRandom`` for k-of-n), and nothing released names them. The
seeded draw makes simulations and non-DP jobs reproducible; anyone with the job seed can
recompute it.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np
import xxhash

from tsfl.privacy.noise import SecureNoise


class UniformSelector:
    """Each round, k clients drawn uniformly without replacement — seeded per round, or
    from a CSPRNG when ``secure`` (then ``seed`` is unused)."""

    def __init__(self, seed: int | None, *, secure: bool = False):
        if seed is None and not secure:
            raise ValueError("a seeded selector needs a seed")
        self.seed = seed
        self.secure = secure

    def select(self, round_number: int, available: Sequence[str], k: int) -> list[str]:
        if k > len(available):
            raise ValueError(f"cannot select {k} of {len(available)} available clients")
        if self.secure:
            picks = secrets.SystemRandom().sample(range(len(available)), k)
        else:
            assert self.seed is not None
            rng = np.random.default_rng([self.seed, round_number, 0x5E1EC7])
            picks = rng.choice(len(available), size=k, replace=False).tolist()
        return [available[i] for i in picks]

    def poisson(self, round_number: int, available: Sequence[str], rate: float) -> list[str]:
        """Each client independently with probability ``rate`` (Poisson sampling, the
        sampling that DP-FedAvg's amplification bound assumes)."""
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"sampling rate must be in (0, 1], got {rate}")
        if self.secure:
            u = SecureNoise().uniform(len(available)) if available else np.zeros(0)
        else:
            assert self.seed is not None
            u = np.random.default_rng([self.seed, round_number, 0x9015]).random(len(available))
        keep = u < rate
        return [c for c, k in zip(available, keep, strict=True) if k]


def client_seed(job_seed: int, round_number: int, client_id: str) -> int:
    """The local-training seed handed to a client with its task (same in both deployments)."""
    ident = xxhash.xxh3_64_intdigest(client_id.encode())
    return int(np.random.default_rng([job_seed, round_number, ident]).integers(2**63))
