"""The device side of HE jobs: encrypt and sign the update's hidden coordinates, open
models.

A device of an HE job holds its identity (:class:`~tsfl.identity.DeviceIdentity`: every
section it sends is signed, :mod:`tsfl.he.signing`) and the job's key: under
``keying: shared`` the job's secret key set (``tsfl keys init``), under
``keying: threshold`` its share of the collective key (the silos' key ceremony,
:mod:`tsfl.he.threshold`). For a round it sends, for the encrypted coordinates, ``w · θ``
with ``θ`` its trained model and ``w = n / weight_unit`` (n: its examples), and its delta
for the clear ones. A model after round one holds zeros at the encrypted coordinates and,
after the vector, ``Σ_k w_k θ_k`` encrypted: the device decrypts it — alone (shared), or
with t silos through the server's opening steps (threshold,
:mod:`tsfl.he.threshold.opening`) — and divides by ``Σ_k w_k``: FedAvg, computed by a
server that never saw a value of it. A threshold silo also makes its share in the job's
key ceremony and opens every new model, selected or not (:mod:`tsfl.sdk.he_silo`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tsfl.core.layout import ParamLayout
from tsfl.he import HeError, HeJob, SealedVector, SecretKeySet, open_vector, seal_vector
from tsfl.he.signing import section_digest, sign_section, split_frame
from tsfl.he.threshold import scheme, sections
from tsfl.he.threshold.keys import KeyShare
from tsfl.he.threshold.opening import OpeningSilo
from tsfl.identity import DeviceIdentity
from tsfl.wire.envelope import Frame
from tsfl.wire.messages import model_sealed

HeKeys = SecretKeySet | KeyShare
#: opened sums a device keeps (by their digest)
_OPENED = 4


@dataclass(frozen=True)
class SiloKeys:
    """A device's HE key with its identity, for callers that hand a device its keys only
    (``start_client(..., he_keys=[SiloKeys(...)])``)."""

    keys: HeKeys
    identity: DeviceIdentity


class HeDevice:
    """The HE keys a device holds, by key id, its identity, and what it derived.

    A threshold-HE silo that makes its key through the coordinator also needs
    ``trusted`` (the identity authorities whose certificates it accepts in the key
    ceremony: its own configuration, never the server's word), optionally ``share_dir``
    (its shares are written there) and ``min_threshold`` (the lowest t it accepts;
    default a majority of the silos)."""

    def __init__(self, keys: Iterable[HeKeys | SiloKeys] = (), *,
                 identity: DeviceIdentity | None = None, min_contributors: int = 2,
                 trusted: Iterable[bytes] = (), share_dir: str | Path | None = None,
                 min_threshold: int | None = None):
        self.identity = identity
        self.keys: dict[str, HeKeys] = {}
        for k in keys:
            if isinstance(k, SiloKeys):
                self.identity = self.identity or k.identity
                k = k.keys
            self.keys[k.key_id] = k
        self.min_contributors = min_contributors
        self.trusted = tuple(bytes(t) for t in trusted)
        self.share_dir = Path(share_dir) if share_dir is not None else None
        self.min_threshold = min_threshold
        self.aborted: dict[str, str] = {}  # job → why this silo left it
        self.no_duties: set[str] = set()  # jobs without threshold keying
        self.joined: dict[str, str] = {}  # job → the ceremony attempt taken part in
        self.opened_versions: set[tuple[str, int]] = set()
        self.retry_at: dict[tuple[str, int], float] = {}  # a failed opening's next try
        self._jobs: dict[tuple[str, str], HeJob] = {}
        self._silos: dict[str, OpeningSilo] = {}
        self._opened: dict[bytes, np.ndarray] = {}

    @property
    def threshold_keys(self) -> bool:
        return any(isinstance(k, KeyShare) for k in self.keys.values())

    def add_share(self, share: KeyShare, job_id: str) -> None:
        """Keep a share made in a key ceremony (and write it, mode 0600, under
        ``share_dir``/<job>/<device>.share)."""
        self.keys[share.key_id] = share
        if self.share_dir is not None:
            share.write(self.share_dir / job_id / f"{share.device_id}.share")

    async def serve(self, transport: Any, client_id: str, job_id: str,
                    layout: ParamLayout) -> None:
        """An idle silo's duties: the key ceremony, opening the current model
        (:func:`tsfl.sdk.he_silo.serve`)."""
        from tsfl.sdk.he_silo import serve

        await serve(self, transport, client_id, job_id, layout)

    def job(self, config: dict[str, Any], layout: ParamLayout) -> tuple[HeKeys, HeJob]:
        """The key and coordinate split a task's ``he`` config names."""
        key_id = str(config.get("key_id"))
        keys = self.keys.get(key_id)
        if keys is None:
            raise HeError("key", f"this device holds no key {key_id!r} for the job (give it "
                                 "the job's key: tsfl devices --he-keys DIR)")
        keying = "threshold" if isinstance(keys, KeyShare) else "shared"
        if config.get("keying", "shared") != keying:
            raise HeError("key", f"the task asks for {config.get('keying')!r} keying, this "
                                 f"device holds a {keying} key {key_id!r}")
        cache = (key_id, layout.digest)
        job = self._jobs.get(cache)
        if job is None:
            unit = float(config.get("weight_unit") or 0)
            if not unit > 0:
                raise HeError("params", "the task's he.weight_unit must be positive")
            public = keys.public.job_key if isinstance(keys, KeyShare) else keys.public
            job = HeJob.build(public, layout, unit, {
                k: config.get(k) for k in ("layers", "regex", "fraction")})
            self._jobs[cache] = job
        return keys, job

    def _silo(self, keys: KeyShare) -> OpeningSilo:
        silo = self._silos.get(keys.key_id)
        if silo is None:
            if self.identity is None:
                raise HeError("identity", "this device has no identity to open sums with")
            silo = self._silos[keys.key_id] = OpeningSilo(keys, self.identity,
                                                          self.min_contributors)
        return silo

    # -- upload ------------------------------------------------------------------------------
    def seal_update(self, keys: HeKeys, job: HeJob, global_vec: np.ndarray,
                    delta: np.ndarray, num_examples: int, *, job_id: str,
                    round_number: int) -> tuple[np.ndarray, bytes]:
        """(the clear coordinates' delta, the signed encrypted section of ``w · θ``)."""
        if self.identity is None:
            raise HeError("identity", "this device has no identity: an encrypted section "
                                      "must be signed (tsfl.identity.DeviceIdentity)")
        weight = num_examples / job.weight_unit
        theta = (global_vec[job.selected].astype(np.float64) + delta[job.selected]) * weight
        if isinstance(keys, SecretKeySet):
            data = seal_vector(keys, theta, weight).to_bytes(keys.public.prime)
        else:
            p = keys.public.params
            _check_range(theta, p.value_bound / p.max_terms)
            polys = scheme.encrypt(p, keys.public.pk0, keys.public.a, theta)
            data = sections.to_bytes(keys.key_id, int(theta.size), weight, polys)
        signed = sign_section(self.identity, data, job_id, round_number)
        if isinstance(keys, KeyShare):  # kept for the sum check of the opening
            head, payload = split_frame(signed, 1 << 16)
            self._silo(keys).remember(job_id, round_number, section_digest(head, payload),
                                      polys)
        return np.ascontiguousarray(delta[job.clear]), signed

    async def commit_section(self, transport: Any, client_id: str, job_id: str, version: int,
                             round_number: int, keys: KeyShare) -> None:
        """Threshold keying, between sealing and uploading: commit to the section and
        wait for the round's full list of signed commitments (checked and kept: the
        opening refuses a sum holding a section outside it). Reveal only after this."""
        step = getattr(transport, "he_open", None)
        if step is None:
            raise HeError("opening", "this transport cannot carry threshold-HE commitments")
        silo = self._silo(keys)
        board = await step(client_id, job_id, version, "commit", {
            "round": round_number, "commit": silo.commit_message(job_id, round_number)})
        silo.accept_commitments(job_id, round_number, board.get("commits") or [])

    # -- models ------------------------------------------------------------------------------
    def open_model(self, model_bytes: Frame, vector: np.ndarray, keys: HeKeys,
                   job: HeJob) -> np.ndarray:
        """The model with its encrypted coordinates decrypted (``vector`` as decoded; the
        initial model has no encrypted part and comes back unchanged). Threshold keying:
        only a sum this device already opened (:meth:`open_round`)."""
        sealed = model_sealed(model_bytes)
        if sealed is None:
            return vector
        out = np.array(vector, dtype=np.float32, copy=True)
        if isinstance(keys, SecretKeySet):
            total = SealedVector.from_bytes(sealed, keys.public, job.size)
            out[job.selected] = open_vector(keys, total) / total.weight
            return out
        view = sections.parse_sum(sealed, keys.public.job_key, job.size)
        hidden = self._opened.get(view.digest)
        if hidden is None:
            raise HeError("opening", f"the sum of round {view.round} is not opened yet")
        out[job.selected] = hidden
        return out

    async def open_model_async(self, transport: Any, client_id: str, job_id: str,
                               version: int, model_bytes: Frame,
                               vector: np.ndarray, keys: HeKeys, job: HeJob) -> np.ndarray:
        """:meth:`open_model`, first taking part in the sum's opening when needed."""
        if isinstance(keys, KeyShare):
            await self.open_round(transport, client_id, job_id, version, model_bytes, keys,
                                  job)
        return self.open_model(model_bytes, vector, keys, job)

    async def open_round(self, transport: Any, client_id: str, job_id: str, version: int,
                         model_bytes: Frame, keys: KeyShare, job: HeJob) -> None:
        """Take part in opening the model's sum: sketch, partial decryption (when this
        silo is one of the t decryptors), combination. A no-op when already opened."""
        sealed = model_sealed(model_bytes)
        if sealed is None:
            return
        view = sections.parse_sum(sealed, keys.public.job_key, job.size)
        if view.job_id != job_id:
            raise HeError("opening", f"the model's sum belongs to job {view.job_id!r}")
        if view.digest in self._opened:
            return
        step = getattr(transport, "he_open", None)
        if step is None:
            raise HeError("opening", "this transport cannot carry threshold openings")
        silo = self._silo(keys)
        board = await step(client_id, job_id, version, "sketch", silo.sketch_message(view))
        mine = keys.device_id in (board.get("decryptors") or [])
        partial = {"partial": silo.partial_message(view, board)} if mine else {}
        board = await step(client_id, job_id, version, "partial", partial)
        values = silo.combine(view, board)
        self._opened[view.digest] = (values / view.weight).astype(np.float32)
        while len(self._opened) > _OPENED:
            self._opened.pop(next(iter(self._opened)))


def _check_range(values: np.ndarray, room: float) -> None:
    if not np.isfinite(values).all():
        raise HeError("values", "cannot encrypt NaN or Inf")
    peak = float(np.abs(values).max()) if values.size else 0.0
    if peak > room:
        raise HeError("values", (
            f"a value of magnitude {peak:.4g} exceeds this client's share of "
            f"crypto.he.value_bound ({room:.4g}); the encrypted sum could wrap: raise "
            "value_bound or weight_unit"))
