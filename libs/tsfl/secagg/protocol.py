"""SecAgg+ (Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS 2020, Fig. 3/4), transport-free: the client and server state machines.

Stages (the server routes every message; U1 ⊇ U2 ⊇ U3 ⊇ U4 are the clients still there):

1. *advertise*: each client sends two X25519 public keys, c (share encryption) and s
   (pairwise masks).
2. *share*: each client draws its self-mask seed b_u, Shamir-shares b_u and its s secret
   key t-of-k among its graph neighbours, and sends each share sealed (AES-GCM, key from
   X25519 of the c keys) for the server to route.
3. *masked input*: y_u = q(x_u) + PRG(b_u) + Σ_{v ∈ N(u) ∩ U2} ±PRG(s_uv)  (mod 2^b), the
   sign + when u < v; s_uv = HKDF(X25519(s_u, s_v)).
4. *unmask*: the server names the dropped (U2 \\ U3) and the survivors (U3); each
   neighbour returns its share of b_u for a survivor or of s_u for a dropped client —
   never both for one client. The server rebuilds them, removes the self masks of
   survivors and the pairwise masks survivors still hold with the dropped, and gets
   Σ_{u ∈ U3} q(x_u) exactly. Fewer than t shares anywhere: the round aborts.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tsfl.secagg import keys, prg, shamir
from tsfl.secagg.graph import harary, neighbour_count
from tsfl.secagg.ring import RingSpec, quantize


class SecAggAbort(RuntimeError):
    """The round cannot finish securely (too many dropouts, a bad message)."""


@dataclass(frozen=True)
class RoundConfig:
    round_id: bytes  # binds every sealed share and mask to this round
    cohort: tuple[str, ...]
    ring: RingSpec
    size: int  # vector length
    neighbours: int
    threshold: int  # shares needed per neighbourhood
    graph_seed: int

    @classmethod
    def build(cls, round_id: bytes, cohort: list[str], ring: RingSpec, size: int,
              graph_seed: int, threshold_fraction: float = 0.5) -> RoundConfig:
        k = neighbour_count(len(cohort))
        t = max(1, min(k, int(threshold_fraction * k) + 1))
        return cls(round_id, tuple(sorted(cohort)), ring, size, k, t, graph_seed)

    def graph(self) -> dict[str, list[str]]:
        return _graph(self.cohort, self.neighbours, self.graph_seed)

    def point(self, client: str) -> int:
        """The Shamir x-coordinate of a client (its 1-based index in the cohort)."""
        return _points(self.cohort)[client]


@functools.lru_cache(maxsize=8)
def _graph(cohort: tuple[str, ...], k: int, seed: int) -> dict[str, list[str]]:
    return harary(list(cohort), k, seed)


@functools.lru_cache(maxsize=8)
def _points(cohort: tuple[str, ...]) -> dict[str, int]:
    return {c: i + 1 for i, c in enumerate(cohort)}


def _pair_sign(u: str, v: str) -> int:
    return 1 if u < v else -1


@dataclass
class SecAggClient:
    client_id: str
    config: RoundConfig
    _c_sk: bytes = b""
    _c_key: X25519PrivateKey | None = None
    _s_sk: bytes = b""
    _b: bytes = b""
    _held: dict[str, tuple[int, int]] = field(default_factory=dict)  # v -> (b share, s share)
    _pks: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    _revealed: dict[str, str] = field(default_factory=dict)  # v -> which secret was revealed
    _channel: dict[str, bytes] = field(default_factory=dict)  # v -> share-sealing key

    def __repr__(self) -> str:  # never print key material
        return f"SecAggClient({self.client_id!r})"

    def advertise(self) -> tuple[bytes, bytes]:
        self._c_sk, c_pk = keys.new_keypair()
        self._c_key = keys.private_key(self._c_sk)
        self._s_sk, s_pk = keys.new_keypair()
        return c_pk, s_pk

    def _channel_key(self, v: str) -> bytes:
        key = self._channel.get(v)
        if key is None:
            if self._c_key is None:
                raise SecAggAbort("advertise keys first")
            key = self._channel[v] = keys.agree(self._c_key, self._pks[v][0], b"share")
        return key

    def _ad(self, sender: str, receiver: str) -> bytes:
        return b"|".join((self.config.round_id, sender.encode(), receiver.encode()))

    def share_keys(self, public_keys: dict[str, tuple[bytes, bytes]]) -> dict[str, bytes]:
        """Sealed shares for each neighbour that advertised keys (stage 2)."""
        neighbours = [v for v in self.config.graph()[self.client_id] if v in public_keys]
        if len(neighbours) < self.config.threshold:
            raise SecAggAbort(f"{self.client_id}: {len(neighbours)} neighbours left, "
                              f"{self.config.threshold} needed")
        if len({pk for pk, _ in public_keys.values()}) != len(public_keys):
            raise SecAggAbort("two clients advertised the same key")
        self._pks = dict(public_keys)
        self._b = os.urandom(32)
        xs = [self.config.point(v) for v in neighbours]
        b_shares = shamir.split(self._b, self.config.threshold, xs)
        s_shares = shamir.split(self._s_sk, self.config.threshold, xs)
        out = {}
        for v, x in zip(neighbours, xs, strict=True):
            body = b_shares[x].to_bytes(66, "big") + s_shares[x].to_bytes(66, "big")
            out[v] = keys.seal(self._channel_key(v), body, self._ad(self.client_id, v))
        return out

    def masked_input(self, x: np.ndarray, sealed: dict[str, bytes],
                     rng: np.random.Generator) -> np.ndarray:
        """Open the shares neighbours sent (stage 2's output) and mask the input."""
        graph = self.config.graph()[self.client_id]
        for v, blob in sealed.items():
            if v not in graph or v not in self._pks:
                raise SecAggAbort(f"{self.client_id}: a share from non-neighbour {v!r}")
            try:
                body = keys.open_sealed(self._channel_key(v), blob, self._ad(v, self.client_id))
            except InvalidTag:
                raise SecAggAbort(f"{self.client_id}: the share from {v} was tampered "
                                  "with") from None
            self._held[v] = (int.from_bytes(body[:66], "big"), int.from_bytes(body[66:], "big"))
        if len(self._held) < self.config.threshold:
            raise SecAggAbort(f"{self.client_id}: shares from {len(self._held)} neighbours, "
                              f"{self.config.threshold} needed")
        ring = self.config.ring
        y = quantize(x, ring, rng)
        y += prg.expand(self._b, self.config.size, ring.mask)
        s_key = keys.private_key(self._s_sk)
        for v in self._held:  # the neighbours that completed stage 2
            seed = keys.agree(s_key, self._pks[v][1], b"mask:" + self.config.round_id)
            m = prg.expand(seed, self.config.size, ring.mask)
            y = y + m if _pair_sign(self.client_id, v) > 0 else y - m
        return y & ring.mask

    def unmask(self, survivors: set[str], dropped: set[str]) -> dict[str, tuple[str, int]]:
        """For each neighbour whose shares we hold: (which secret, our share of it)."""
        if survivors & dropped:
            raise SecAggAbort("a client cannot be both a survivor and dropped")
        if self.client_id not in survivors:
            raise SecAggAbort(f"{self.client_id} is not a survivor")
        alive = [v for v in self._held if v in survivors]
        if len(alive) + 1 < self.config.threshold:
            raise SecAggAbort(f"{self.client_id}: too few neighbours survive")
        out = {}
        for v, (b_share, s_share) in self._held.items():
            kind = "b" if v in survivors else "s" if v in dropped else None
            if kind is None:
                continue
            if self._revealed.setdefault(v, kind) != kind:
                raise SecAggAbort(f"refusing to reveal both secrets of {v}")
            out[v] = (kind, b_share if kind == "b" else s_share)
        return out


@dataclass
class SecAggServer:
    config: RoundConfig
    public_keys: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # U1
    shared: dict[str, dict[str, bytes]] = field(default_factory=dict)  # U2: u -> v -> sealed
    masked: dict[str, np.ndarray] = field(default_factory=dict)  # U3
    responses: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)  # U4

    def receive_keys(self, client: str, c_pk: bytes, s_pk: bytes) -> None:
        if client not in self.config.cohort:
            raise SecAggAbort(f"{client!r} is not in the cohort")
        if len(c_pk) != 32 or len(s_pk) != 32:
            raise SecAggAbort("public keys are 32 bytes")
        self.public_keys[client] = (c_pk, s_pk)

    def receive_shares(self, client: str, sealed: dict[str, bytes]) -> None:
        if client not in self.public_keys:
            raise SecAggAbort(f"{client!r} sent shares without keys")
        graph = self.config.graph()[client]
        if not set(sealed) <= set(graph):
            raise SecAggAbort(f"{client!r} sent shares to non-neighbours")
        self.shared[client] = dict(sealed)

    def shares_for(self, client: str) -> dict[str, bytes]:
        """What stage 3 hands ``client``: the sealed shares its neighbours sent it."""
        return {u: s[client] for u, s in self.shared.items() if client in s}

    def receive_masked(self, client: str, y: np.ndarray) -> None:
        if client not in self.shared:
            raise SecAggAbort(f"{client!r} sent a masked input without sharing keys")
        if y.shape != (self.config.size,) or y.dtype != np.uint64 or (
                y > self.config.ring.mask).any():
            raise SecAggAbort(f"{client!r}: a masked input must be {self.config.size} ring "
                              "elements")
        self.masked[client] = y

    def unmask_request(self) -> tuple[set[str], set[str]]:
        survivors = set(self.masked)
        if len(survivors) < self.config.threshold:
            raise SecAggAbort(f"{len(survivors)} masked inputs, {self.config.threshold} "
                              "needed")
        return survivors, set(self.shared) - survivors

    def receive_unmask(self, client: str, shares: dict[str, tuple[str, int]]) -> None:
        if client not in self.masked:
            raise SecAggAbort(f"{client!r} is not a survivor")
        self.responses[client] = dict(shares)

    def _rebuild(self, u: str, kind: str) -> bytes:
        shares = {self.config.point(v): r[u][1] for v, r in self.responses.items()
                  if u in r and r[u][0] == kind}
        if len(shares) < self.config.threshold:
            raise SecAggAbort(f"only {len(shares)} shares to unmask {u} "
                              f"({self.config.threshold} needed): too many dropouts")
        try:
            return shamir.combine(shares, self.config.threshold)
        except shamir.ShamirError as exc:
            raise SecAggAbort(f"unmasking {u}: {exc}") from None

    def result(self) -> tuple[np.ndarray, list[str]]:
        """Σ q(x_u) over the survivors (exact integers mod 2^b) and who they are."""
        survivors, dropped = set(self.masked), set(self.shared) - set(self.masked)
        ring, n = self.config.ring, self.config.size
        total = np.zeros(n, np.uint64)
        for y in self.masked.values():
            total += y
        for u in sorted(survivors):
            total -= prg.expand(self._rebuild(u, "b"), n, ring.mask)
        graph = self.config.graph()
        for u in sorted(dropped):
            s_sk = keys.private_key(self._rebuild(u, "s"))
            for v in graph[u]:
                if v in survivors and u in self.shared and v in self.shared[u]:
                    seed = keys.agree(s_sk, self.public_keys[v][1],
                                      b"mask:" + self.config.round_id)
                    m = prg.expand(seed, n, ring.mask)
                    # v added sign(v, u)·m; take it away
                    total = total - m if _pair_sign(v, u) > 0 else total + m
        return total & ring.mask, sorted(survivors)
