"""The server's side of a SecAgg+ round (:class:`SecAggServer`): routes the stages'
messages, checks their shapes and signatures, and unmasks the survivors' sum
(protocol: :mod:`tsfl.secagg`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from tsfl.identity import IdentityError, verify
from tsfl.secagg import keys, prg, shamir
from tsfl.secagg.advert import CONSISTENCY, Advert, consistency_message, graph_seed
from tsfl.secagg.keys import EK_BYTES, KEM_CT_BYTES
from tsfl.secagg.round import SHARE_BODY, RoundConfig, SecAggAbort, mask_seed, pair_sign


class SecAggServer:
    """The server's side: routes, checks shapes and signatures (so one bad client does
    not make the honest ones abort), unmasks the sum."""

    def __init__(self, config: RoundConfig):
        self.config = config
        self.adverts: dict[str, Advert] = {}  # U1
        self.eks: dict[str, bytes] = {}
        self.seed: bytes | None = None
        self._wire: dict[str, dict[str, Any]] = {}
        self.shared: dict[str, dict[str, bytes]] = {}  # U2: u -> v -> sealed
        self.masked: dict[str, np.ndarray] = {}  # U3
        self.signatures: dict[str, bytes] = {}  # U4
        self.responses: dict[str, dict[str, tuple[str, int]]] = {}  # U5

    def receive_advert(self, client: str, payload: Mapping[str, Any]) -> None:
        cfg = self.config
        if client not in cfg.cohort:
            raise SecAggAbort(f"{client!r} is not in the cohort")
        if self.seed is not None:
            raise SecAggAbort("the advertise stage is over")
        try:
            ad = Advert.from_wire(client, payload)
            ad.verify(cfg.round_id)
        except IdentityError as exc:
            raise SecAggAbort(f"advertisement of {client!r}: {exc}") from None
        ek = payload.get("ek", b"")
        if cfg.hybrid:
            if (not isinstance(ek, bytes) or len(ek) != EK_BYTES
                    or hashlib.sha256(ek).digest() != ad.ek_hash):
                raise SecAggAbort(f"advertisement of {client!r}: the ML-KEM-768 key is "
                                  "missing or not the signed one")
            self.eks[client] = ek
        elif ek or ad.ek_hash:
            raise SecAggAbort(f"advertisement of {client!r}: an ML-KEM key in a round "
                              "that uses x25519 alone")
        for other in self.adverts.values():
            if ad.c_pk in (other.c_pk, other.s_pk) or ad.s_pk in (other.c_pk, other.s_pk):
                raise SecAggAbort(f"{client!r} advertised another client's key")
        self.adverts[client] = ad

    def close_adverts(self) -> bytes:
        """End of stage 1: the graph seed (every device derives the same)."""
        cfg = self.config
        if len(self.adverts) < cfg.min_survivors:
            raise SecAggAbort(f"{len(self.adverts)} clients advertised keys, "
                              f"{cfg.min_survivors} needed (δ = {cfg.dropout})")
        self.seed = graph_seed(cfg.round_id, self.adverts)
        self._wire = {v: ad.to_wire() for v, ad in self.adverts.items()}
        return self.seed

    def adverts_for(self, client: str) -> dict[str, Any]:
        """Stage 2's input for ``client``: every advertisement, its neighbours' KEM keys."""
        assert self.seed is not None
        near = self.config.graph(self.seed)[client]
        return {"ads": self._wire,
                "eks": {v: self.eks[v] for v in near if v in self.eks}}

    def receive_shares(self, client: str, sealed: Mapping[str, bytes]) -> None:
        if client not in self.adverts or self.seed is None:
            raise SecAggAbort(f"{client!r} sent shares without keys")
        near = set(self.config.graph(self.seed)[client])
        if not set(sealed) <= near & set(self.adverts):
            raise SecAggAbort(f"{client!r} sent shares to non-neighbours")
        length = 12 + SHARE_BODY + 16 + (KEM_CT_BYTES if self.config.hybrid else 0)
        if any(len(b) != length for b in sealed.values()):
            raise SecAggAbort(f"{client!r}: a sealed share is {length} bytes")
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

    def unmask_request(self) -> list[str]:
        """End of stage 3: the survivors U3 everyone is asked to sign."""
        if len(self.masked) < self.config.min_survivors:
            raise SecAggAbort(f"{len(self.masked)} masked inputs, "
                              f"{self.config.min_survivors} needed (δ = "
                              f"{self.config.dropout})")
        return sorted(self.masked)

    def receive_signature(self, client: str, signature: bytes) -> None:
        if client not in self.masked or self.seed is None:
            raise SecAggAbort(f"{client!r} is not a survivor")
        try:
            verify(self.adverts[client].cert, CONSISTENCY,
                   consistency_message(self.config.round_id, self.seed, self.masked),
                   signature)
        except IdentityError as exc:
            raise SecAggAbort(f"{client!r}: {exc}") from None
        self.signatures[client] = signature

    def close_consistency(self) -> None:
        if len(self.signatures) < self.config.threshold:
            raise SecAggAbort(f"{len(self.signatures)} survivors signed, "
                              f"{self.config.threshold} needed")

    def signatures_for(self, client: str) -> dict[str, bytes]:
        assert self.seed is not None
        return {v: self.signatures[v] for v in self.config.graph(self.seed)[client]
                if v in self.signatures}

    def receive_unmask(self, client: str, shares: Mapping[str, tuple[str, int]]) -> None:
        if client not in self.signatures:
            raise SecAggAbort(f"{client!r} did not sign the survivor set")
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
        """Σ c_u over the survivors (exact integers mod 2^b) and who they are."""
        assert self.seed is not None
        survivors, dropped = set(self.masked), set(self.shared) - set(self.masked)
        ring, n = self.config.ring, self.config.size
        total = np.zeros(n, "<u8")
        for y in self.masked.values():
            total += y
        scratch = np.empty(n, "<u8")
        for u in sorted(survivors):
            prg.add(total, self._rebuild(u, "b"), scratch, subtract=True)
        near = self.config.graph(self.seed)
        for u in sorted(dropped):
            s_sk = keys.private_key(self._rebuild(u, "s"))
            for v in near[u]:
                if v in survivors and v in self.shared[u]:
                    # v added sign(v, u)·m; take it away
                    prg.add(total, mask_seed(s_sk, self.adverts[v].s_pk, self.config.round_id),
                            scratch, subtract=pair_sign(v, u) > 0)
        total &= ring.mask
        return total.astype(np.uint64, copy=False), sorted(survivors)
