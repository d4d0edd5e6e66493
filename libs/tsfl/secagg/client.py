"""A device's side of a SecAgg+ round (:class:`SecAggClient`): the five stages, each
checking what the server sent before using it (protocol: :mod:`tsfl.secagg`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tsfl.identity import DeviceIdentity, IdentityError, verify
from tsfl.secagg import keys, prg, shamir
from tsfl.secagg.advert import CONSISTENCY, Advert, Trust, consistency_message, graph_seed
from tsfl.secagg.keys import EK_BYTES, KEM_CT_BYTES
from tsfl.secagg.round import (
    SHARE_BODY,
    RoundConfig,
    SecAggAbort,
    SecAggRefusal,
    mask_seed,
    pair_sign,
)


def _refuse(code: str, message: str) -> SecAggRefusal:
    return SecAggRefusal(code, message)


class SecAggClient:
    """One device's side of a round. Every method checks what the server sent before
    using it and raises :class:`SecAggRefusal` when it does not hold up."""

    def __init__(self, client_id: str, config: RoundConfig, identity: DeviceIdentity,
                 trust: Trust):
        if identity.device_id != client_id:
            raise _refuse("identity", f"the identity is {identity.device_id!r}, the device "
                                      f"{client_id!r}")
        if not trust:
            raise _refuse("identity", "no trusted identity authority is configured: this "
                                      "device cannot tell its neighbours' keys from the "
                                      "server's")
        if client_id not in config.cohort:
            raise _refuse("parameters", f"{client_id!r} is not in the round's cohort")
        config.check()
        self.client_id = client_id
        self.config = config
        self.identity = identity
        self.trust = trust
        self._stage = "advertise"
        self._c_key: X25519PrivateKey | None = None
        self._s_key: X25519PrivateKey | None = None
        self._s_sk = b""
        self._kem: MLKEM768PrivateKey | None = None
        self._ad: Advert | None = None
        self._adverts: dict[str, Advert] = {}
        self._seed = b""
        self._neighbours: list[str] = []
        self._x: dict[str, bytes] = {}  # v -> X25519(c_u, c_v)
        self._b = b""
        self._held: dict[str, tuple[int, int]] = {}  # v -> (b share, s share)
        self._survivors: frozenset[str] | None = None
        self._revealed: dict[str, str] = {}  # v -> which secret was revealed

    def __repr__(self) -> str:  # never print key material
        return f"SecAggClient({self.client_id!r})"

    def _enter(self, stage: str, after: str) -> None:
        if self._stage != after:
            raise SecAggAbort(f"{self.client_id}: {stage} out of order (at {self._stage})")
        self._stage = stage

    # -- 1. advertise ----------------------------------------------------------------------
    def advertise(self) -> dict[str, Any]:
        """The advertisement payload: signed keys, the certificate (and the KEM key)."""
        self._enter("share", "advertise")
        c_sk, c_pk = keys.new_keypair()
        self._s_sk, s_pk = keys.new_keypair()
        self._c_key, self._s_key = keys.private_key(c_sk), keys.private_key(self._s_sk)
        ek = b""
        if self.config.hybrid:
            self._kem, ek = keys.new_kem_keypair()
        self._ad = Advert.create(self.identity, self.config.round_id, c_pk, s_pk,
                                 hashlib.sha256(ek).digest() if ek else b"")
        payload = self._ad.to_wire()
        if ek:
            payload["ek"] = ek
        return payload

    # -- 2. share --------------------------------------------------------------------------
    def _check_adverts(self, adverts: Mapping[str, Any]) -> dict[str, Advert]:
        cfg = self.config
        strangers = set(adverts) - set(cfg.cohort)
        if strangers:
            raise _refuse("advertisement", f"advertisements from outside the cohort: "
                                           f"{sorted(strangers)[:3]}")
        parsed = {}
        for v, raw in adverts.items():
            try:
                ad = Advert.from_wire(v, raw)
                self.trust.check(ad.cert, v)
                ad.verify(cfg.round_id)
            except IdentityError as exc:
                raise _refuse("advertisement", f"{self.client_id}: the keys of {v} cannot "
                                               f"be authenticated: {exc}") from None
            if bool(ad.ek_hash) != cfg.hybrid:
                raise _refuse("advertisement", f"the advertisement of {v} does not match "
                                               f"the key agreement {cfg.key_agreement}")
            parsed[v] = ad
        if parsed.get(self.client_id) != self._ad:
            raise _refuse("advertisement", f"{self.client_id}: the server dropped or "
                                           "altered this device's own advertisement")
        if len(parsed) < cfg.min_survivors:
            raise _refuse("dropouts", f"{len(parsed)} of {len(cfg.cohort)} clients "
                                      f"advertised keys; δ = {cfg.dropout} allows no fewer "
                                      f"than {cfg.min_survivors}")
        for name in ("c_pk", "s_pk"):
            if len({getattr(ad, name) for ad in parsed.values()}) != len(parsed):
                raise _refuse("advertisement", "two clients advertised the same key")
        return parsed

    def share_keys(self, adverts: Mapping[str, Any],
                   eks: Mapping[str, bytes] | None = None) -> dict[str, bytes]:
        """Check every advertisement, derive the graph, and seal the shares for each
        neighbour that advertised keys (stage 2). ``eks``: the neighbours' ML-KEM
        encapsulation keys (hybrid mode)."""
        self._enter("masked", "share")
        cfg = self.config
        self._adverts = self._check_adverts(adverts)
        self._seed = graph_seed(cfg.round_id, self._adverts)
        self._neighbours = [v for v in cfg.neighbours_of(self._seed, self.client_id)
                            if v in self._adverts]
        if len(self._neighbours) < cfg.threshold:
            raise SecAggAbort(f"{self.client_id}: {len(self._neighbours)} neighbours left, "
                              f"{cfg.threshold} needed")
        targets = {}
        for v in self._neighbours:
            ek = b""
            if cfg.hybrid:
                ek = (eks or {}).get(v, b"")
                if (not isinstance(ek, bytes) or len(ek) != EK_BYTES
                        or hashlib.sha256(ek).digest() != self._adverts[v].ek_hash):
                    raise _refuse("advertisement", f"the ML-KEM key of {v} is not the one "
                                                   "it signed")
            targets[v] = ek
        self._b = os.urandom(32)
        xs = [cfg.point(v) for v in self._neighbours]
        b_shares = shamir.split(self._b, cfg.threshold, xs)
        s_shares = shamir.split(self._s_sk, cfg.threshold, xs)
        out = {}
        for v, x in zip(self._neighbours, xs, strict=True):
            body = b_shares[x].to_bytes(66, "big") + s_shares[x].to_bytes(66, "big")
            ss, ct = keys.encapsulate(targets[v]) if cfg.hybrid else (b"", b"")
            key = keys.channel_key(self._exchange(v), ss, ct, cfg.round_id, self.client_id, v)
            out[v] = ct + keys.seal(key, body, keys.route(cfg.round_id, self.client_id, v))
        return out

    def _exchange(self, v: str) -> bytes:
        found = self._x.get(v)
        if found is None:
            assert self._c_key is not None
            found = self._x[v] = keys.exchange(self._c_key, self._adverts[v].c_pk)
        return found

    # -- 3. masked input -------------------------------------------------------------------
    def _open(self, v: str, blob: bytes) -> bytes:
        cfg = self.config
        ct, sealed = (blob[:KEM_CT_BYTES], blob[KEM_CT_BYTES:]) if cfg.hybrid else (b"", blob)
        try:
            ss = b""
            if cfg.hybrid:
                assert self._kem is not None
                ss = keys.decapsulate(self._kem, ct)
            key = keys.channel_key(self._exchange(v), ss, ct, cfg.round_id, v, self.client_id)
            body = keys.open_sealed(key, sealed, keys.route(cfg.round_id, v, self.client_id))
        except (InvalidTag, ValueError):
            raise _refuse("tampered", f"{self.client_id}: the share from {v} was tampered "
                                      "with") from None
        if len(body) != SHARE_BODY:
            raise _refuse("tampered", f"{self.client_id}: the share from {v} is malformed")
        return body

    def masked_input(self, codes: np.ndarray, sealed: Mapping[str, bytes]) -> np.ndarray:
        """Open the shares neighbours sent (stage 2's output) and mask the ring codes."""
        self._enter("consistency", "masked")
        cfg = self.config
        ring = cfg.ring
        if (codes.shape != (cfg.size,) or codes.dtype != np.uint64
                or (codes.size and int(codes.max()) > ring.levels)):
            raise SecAggAbort(f"{self.client_id}: {cfg.size} ring codes below 2^q expected")
        mine = set(self._neighbours)
        for v, blob in sealed.items():
            if v not in mine:
                raise _refuse("routing", f"{self.client_id}: a share from non-neighbour "
                                         f"{v!r}")
            body = self._open(v, blob)
            self._held[v] = (int.from_bytes(body[:66], "big"), int.from_bytes(body[66:], "big"))
        if len(self._held) < cfg.threshold:
            raise SecAggAbort(f"{self.client_id}: shares from {len(self._held)} neighbours, "
                              f"{cfg.threshold} needed")
        y = codes.astype("<u8")  # a copy; masks add modulo 2^64, reduced once at the end
        scratch = np.empty(cfg.size, "<u8")
        prg.add(y, self._b, scratch)
        assert self._s_key is not None
        for v in self._held:  # the neighbours that completed stage 2
            prg.add(y, mask_seed(self._s_key, self._adverts[v].s_pk, cfg.round_id), scratch,
                    subtract=pair_sign(self.client_id, v) < 0)
        y &= ring.mask
        return y

    # -- 4. consistency --------------------------------------------------------------------
    def consistency(self, survivors: Iterable[str]) -> bytes:
        """Sign the survivor set U3 the server announced (once: a second, different set
        is refused)."""
        cfg = self.config
        u3 = frozenset(survivors)
        if self._survivors is not None:
            if u3 != self._survivors:
                raise _refuse("consistency", f"{self.client_id}: the server announced two "
                                             "different survivor sets")
        else:
            self._enter("unmask", "consistency")
        if self.client_id not in u3:
            raise _refuse("consistency", f"{self.client_id} is not among the survivors")
        if not u3 <= set(self._adverts):
            raise _refuse("consistency", "survivors that never advertised keys")
        if len(u3) < cfg.min_survivors:
            raise _refuse("dropouts", f"{len(u3)} of {len(cfg.cohort)} clients survive; "
                                      f"δ = {cfg.dropout} allows no fewer than "
                                      f"{cfg.min_survivors}")
        self._survivors = u3
        return self.identity.sign(CONSISTENCY, consistency_message(cfg.round_id, self._seed,
                                                                   u3))

    # -- 5. unmask -------------------------------------------------------------------------
    def unmask(self, signatures: Mapping[str, bytes]) -> dict[str, tuple[str, int]]:
        """After t neighbours signed the same survivor set: for each neighbour whose
        shares we hold, (which secret, our share of it)."""
        self._enter("done", "unmask")
        cfg = self.config
        u3 = self._survivors
        assert u3 is not None
        msg = consistency_message(cfg.round_id, self._seed, u3)
        agreeing = 0
        for v in self._neighbours:
            sig = signatures.get(v)
            if sig is None or v not in u3:
                continue
            try:
                verify(self._adverts[v].cert, CONSISTENCY, msg, sig)
            except IdentityError:
                continue
            agreeing += 1
        if agreeing < cfg.threshold:
            raise _refuse("consistency", f"{self.client_id}: {agreeing} neighbours signed "
                                         f"this survivor set, {cfg.threshold} needed: the "
                                         "server may have told clients different sets")
        out = {}
        for v, (b_share, s_share) in self._held.items():
            kind = "b" if v in u3 else "s"
            if self._revealed.setdefault(v, kind) != kind:
                raise _refuse("consistency", f"refusing to reveal both secrets of {v}")
            out[v] = (kind, b_share if kind == "b" else s_share)
        return out
