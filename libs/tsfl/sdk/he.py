"""The device side of HE jobs: encrypt the update's hidden coordinates, decrypt models.

A device of an HE job holds the job's secret key set (``tsfl keys init``; simulated
devices get the one ``tsfl run`` makes). For a round it sends, for the encrypted
coordinates, ``w · θ`` with ``θ`` its trained model and ``w = n / weight_unit`` (n: its
examples), and its delta for the clear ones. A model after round one holds zeros at the
encrypted coordinates and, after the vector, ``Σ_k w_k θ_k`` encrypted: the device
decrypts it and divides by ``Σ_k w_k`` — FedAvg, computed by a server that never saw a
value of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from tsfl.core.layout import ParamLayout
from tsfl.he import HeError, HeJob, SealedVector, SecretKeySet, open_vector, seal_vector
from tsfl.wire.messages import model_sealed


class HeDevice:
    """The secret key sets a device holds, by key id, and what it derived from them."""

    def __init__(self, keys: Iterable[SecretKeySet] = ()):
        self.keys = {k.key_id: k for k in keys}
        self._jobs: dict[tuple[str, str], HeJob] = {}

    def job(self, config: dict[str, Any], layout: ParamLayout) -> tuple[SecretKeySet, HeJob]:
        """The key set and coordinate split a task's ``he`` config names."""
        key_id = str(config.get("key_id"))
        keys = self.keys.get(key_id)
        if keys is None:
            raise HeError("key", f"this device holds no secret key {key_id!r} for the job "
                                 "(give it the job's key set: tsfl devices --he-keys DIR)")
        cache = (key_id, layout.digest)
        job = self._jobs.get(cache)
        if job is None:
            unit = float(config.get("weight_unit") or 0)
            if not unit > 0:
                raise HeError("params", "the task's he.weight_unit must be positive")
            job = HeJob.build(keys.public, layout, unit, {
                k: config.get(k) for k in ("layers", "regex", "fraction")})
            self._jobs[cache] = job
        return keys, job

    @staticmethod
    def open_model(model_bytes: bytes | memoryview, vector: np.ndarray, keys: SecretKeySet,
                   job: HeJob) -> np.ndarray:
        """The model with its encrypted coordinates decrypted (``vector`` as decoded; the
        initial model has no encrypted part and comes back unchanged)."""
        sealed = model_sealed(model_bytes)
        if sealed is None:
            return vector
        total = SealedVector.from_bytes(sealed, keys.public, int(job.selected.size))
        out = np.array(vector, dtype=np.float32, copy=True)
        out[job.selected] = open_vector(keys, total) / total.weight
        return out

    @staticmethod
    def seal_update(keys: SecretKeySet, job: HeJob, global_vec: np.ndarray,
                    delta: np.ndarray, num_examples: int) -> tuple[np.ndarray, bytes]:
        """(the clear coordinates' delta, the encrypted section of ``w · θ``)."""
        weight = num_examples / job.weight_unit
        theta = global_vec[job.selected].astype(np.float64) + delta[job.selected]
        sealed = seal_vector(keys, theta * weight, weight)
        return np.ascontiguousarray(delta[job.clear]), sealed.to_bytes(keys.public.prime)
