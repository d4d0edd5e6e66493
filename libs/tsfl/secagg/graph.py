"""SecAgg+'s communication graph: each client talks to k = O(log n) neighbours.

A Harary graph H(n, k) over a pseudorandom permutation of the cohort (Bell et al. 2020,
Sec. 3.3): the client at position i neighbours positions i ± 1 … i ± k/2 (k even), or
everyone (k = n − 1, the complete graph of Bonawitz et al. 2017). The permutation sorts
the cohort by SHA-256(seed ‖ client id): portable (no library's PRNG stream), and fixed by
the 32-byte round seed, which every party derives from the signed advertisements
(:func:`tsfl.secagg.advert.graph_seed`) once the keys are fixed, so a server cannot
choose it. (k, t) come from :mod:`tsfl.secagg.params`.
"""

from __future__ import annotations

import functools
import hashlib


@functools.lru_cache(maxsize=16)
def order(clients: tuple[str, ...], seed: bytes) -> tuple[str, ...]:
    """The cohort in its pseudorandom order for ``seed``."""
    if len(seed) != 32:
        raise ValueError("a graph seed is 32 bytes")
    return tuple(sorted(clients, key=lambda c: hashlib.sha256(seed + c.encode()).digest()))


def neighbours(clients: tuple[str, ...], k: int, seed: bytes, who: str) -> list[str]:
    """``who``'s neighbours in H(n, k) (sorted); what a device computes for itself."""
    ring = order(clients, seed)
    n = len(ring)
    if not 1 <= k <= n - 1 or (k % 2 and k != n - 1):
        raise ValueError(f"degree {k} is neither even nor n − 1 for n = {n}")
    if k == n - 1:
        return sorted(c for c in clients if c != who)
    i = ring.index(who)
    near = {ring[(i + d) % n] for d in range(1, k // 2 + 1)}
    near |= {ring[(i - d) % n] for d in range(1, k // 2 + 1)}
    return sorted(near)


@functools.lru_cache(maxsize=8)
def harary(clients: tuple[str, ...], k: int, seed: bytes) -> dict[str, tuple[str, ...]]:
    """Everyone's neighbours (the server's view); symmetric and k-regular."""
    ring = order(clients, seed)
    n = len(ring)
    if k == n - 1:
        return {c: tuple(sorted(v for v in clients if v != c)) for c in clients}
    if not 1 <= k <= n - 1 or k % 2:
        raise ValueError(f"degree {k} is neither even nor n − 1 for n = {n}")
    half = k // 2
    return {c: tuple(sorted({ring[(i + d) % n] for d in range(-half, half + 1) if d}))
            for i, c in enumerate(ring)}
