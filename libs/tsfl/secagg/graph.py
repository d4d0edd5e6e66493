"""SecAgg+'s communication graph: each client talks to O(log n) neighbours.

A Harary graph H(k, n) over a random permutation of the cohort (Bell et al. 2020,
Sec. 3.3): client at position i neighbours positions i ± 1 … i ± k/2. The permutation is
drawn from the round's public seed, so every party derives the same graph.
"""

from __future__ import annotations

import math

import numpy as np


def neighbour_count(n: int, security: float = 1.0) -> int:
    """An even degree ~ O(log n), at least 2 and at most n − 1."""
    if n <= 2:
        return n - 1
    k = 2 * math.ceil(security * 2 * math.log2(n))
    k = min(k, n - 1)
    return k if k % 2 == 0 or k == n - 1 else k - 1


def harary(clients: list[str], k: int, seed: int) -> dict[str, list[str]]:
    n = len(clients)
    order = [clients[i] for i in np.random.default_rng([seed, 0x4A4A]).permutation(n)]
    pos = {c: i for i, c in enumerate(order)}
    graph = {}
    for c in clients:
        i = pos[c]
        near = {order[(i + d) % n] for d in range(1, k // 2 + 1)} | {
            order[(i - d) % n] for d in range(1, k // 2 + 1)}
        if k % 2 and n % 2 == 0:  # odd degree: add the opposite vertex
            near.add(order[(i + n // 2) % n])
        near.discard(c)
        graph[c] = sorted(near)
    return graph
