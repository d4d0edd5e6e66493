"""Batched local training in the embedded simulation (``simulation.batched: auto``).

When a round's cohort is known, its clients' tasks are read first (as each device will
read its own); when the first of them fits, its whole chunk of the cohort trains in one
vectorised call (:func:`tsfl.training.batched.train_cohort`) from the model that device
downloaded, and every other device of the chunk finds its result waiting: each device
still downloads, decodes, privatises, encodes and uploads through the full pipeline,
only its local training ran earlier, in the batch. A result is used only when the
device asks with the same model, seed and settings it was computed for (else the device
trains alone), and each chunk's results are released as they are taken, so memory is a
chunk's, not a cohort's.

Batched: the built-in models (MLP, logistic regression, CNN) with SGD (momentum, weight
decay, FedProx's μ) or Adam, including local DP (noise is added by the device after
training), data-poisoning attackers (their records are poisoned) and update attackers
(the attack rewrites the batched result). One client at a time, said once in the log:
``simulation.batched: off``; record-level DP-SGD (per-record clipping and noise, and
Poisson batches from each device's own CSPRNG, stay on the device); custom models (an
installed builder or an import path: nothing proves them pure functions of their
parameters); a model with buffers, dropout or batch statistics. Clients that are not
plain simulated clients (e.g. an audit's canaries) always fit alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from tsfl.config import JobSpec
from tsfl.runtime.lazy_clients import PopulationClient
from tsfl.runtime.simulation import Federation, MaliciousClient
from tsfl.sdk.client import TorchClient
from tsfl.training.batched import (
    DEFAULT_CHUNK_BYTES,
    Member,
    plan_chunks,
    train_cohort,
    unbatchable,
)
from tsfl.training.loop import TrainSettings

log = logging.getLogger("tsfl.sim.batched")

Fit = tuple[np.ndarray, int, dict[str, float]]

#: fewer clients than this (of one round, with the same settings) train one at a time:
#: below it the vectorised step's fixed cost outweighs the per-client loop's (measured
#: break-even ≈ 8 on 2 cores for the built-in MLP and logistic regression)
MIN_BATCH = 8


def batching_off(spec: JobSpec, fed: Federation) -> str | None:
    """Why this job's clients must train one at a time (``None``: they can batch)."""
    if spec.simulation.batched == "off":
        return "simulation.batched is off"
    if spec.training.dp_sgd is not None:
        return ("training.dp_sgd: per-record clipping, noise and Poisson batches stay on "
                "each device")
    if spec.model.kind == "custom":
        return "a custom model (nothing proves it a pure function of its parameters)"
    return unbatchable(fed.workspace.module, fed.workspace.layout)


@dataclass
class _Pending:
    """One device's place in a planned chunk."""

    chunk: int
    client: TorchClient
    seed: int | None
    settings: TrainSettings


@dataclass
class _Ready:
    start: np.ndarray
    seed: int | None
    settings: TrainSettings
    fit: Fit


class CohortTraining:
    """The embedded run's batched local training: :meth:`client` wraps the clients the
    runners drive, :meth:`prepare` plans each round's cohort."""

    def __init__(self, spec: JobSpec, fed: Federation, *,
                 max_bytes: int = DEFAULT_CHUNK_BYTES, min_batch: int = MIN_BATCH):
        self.fed, self.max_bytes, self.min_batch = fed, max_bytes, min_batch
        self.off = batching_off(spec, fed)
        if self.off is not None:
            log.info("batched local training is off: %s; clients train one at a time",
                     self.off)
        self.pending: dict[str, _Pending] = {}
        self.chunks: list[list[str]] = []
        self.ready: dict[str, _Ready] = {}
        self.batched = 0  # fits served from a batch (all rounds)

    def client(self, cid: str) -> Any:
        """The client a runner drives for ``cid``: the simulated client, its training
        served from a batch when one was planned for it."""
        client = self.fed.clients[cid]
        if self.off is not None:
            return client
        if isinstance(client, MaliciousClient) and self._plain(client.inner):
            # a served client trains like the TorchClient it wraps (the attack wraps it)
            return MaliciousClient(cast(TorchClient, _Served(cid, client.inner, self)),
                                   client.attack)
        return _Served(cid, client, self) if self._plain(client) else client

    def _plain(self, client: Any) -> bool:
        """A simulated client the batch trains exactly as it would train itself."""
        return (type(client) in (TorchClient, PopulationClient) and client.dp_sgd is None
                and client.flat is self.fed.workspace)

    async def prepare(self, cohort: list[str], transport: Any, skip: Any = ()) -> None:
        """Plan the round: read the tasks of ``cohort`` (but ``skip``) and group the
        batchable devices into chunks of consecutive cohort members, by settings (groups
        of fewer than ``min_batch`` devices train one at a time)."""
        self.pending.clear()
        self.chunks.clear()
        self.ready.clear()
        if self.off is not None:
            return
        groups: dict[TrainSettings, list[tuple[str, TorchClient, int | None]]] = {}
        for cid in cohort:
            if cid in skip:
                continue
            client = self.fed.clients[cid]
            inner = client.inner if isinstance(client, MaliciousClient) else client
            if not self._plain(inner):
                continue
            task = await transport.get_task(cid)
            if task is None:
                continue
            settings = inner._settings(task.config)
            groups.setdefault(settings, []).append((cid, inner, task.config.get("seed")))
        size = self.fed.workspace.layout.total_size
        record_bytes = 4 * int(np.prod(self.fed.data.input_shape))
        for settings, members in groups.items():
            if len(members) < self.min_batch:
                continue
            sizes = [_records(c) for _, c, _ in members]
            for chunk in plan_chunks(sizes, record_bytes, size, settings, self.max_bytes):
                self.chunks.append([members[k][0] for k in chunk])
                for k in chunk:
                    cid, inner, seed = members[k]
                    self.pending[cid] = _Pending(len(self.chunks) - 1, inner, seed,
                                                 settings)

    def take(self, cid: str, client: TorchClient, vector: np.ndarray,
             config: dict[str, Any]) -> Fit | None:
        """``cid``'s batched result for this fit, training its chunk first if need be;
        ``None`` when there is none that fits exactly this call (it then trains alone)."""
        if self.off is not None:
            return None
        if cid not in self.ready and cid in self.pending:
            self._train(self.pending[cid].chunk, vector)
        ready = self.ready.pop(cid, None)
        if (ready is None or ready.seed != config.get("seed")
                or ready.settings != client._settings(config)
                or not np.array_equal(ready.start, vector)):
            return None
        self.batched += 1
        return ready.fit

    def _train(self, chunk: int, vector: np.ndarray) -> None:
        cids = [c for c in self.chunks[chunk] if c in self.pending]
        plans = [self.pending.pop(c) for c in cids]
        settings = plans[0].settings
        workspace = self.fed.workspace
        members = [Member(p.client.x, p.client.y, p.seed) for p in plans]
        start = np.array(vector, dtype=np.float32, copy=True)
        try:
            out = train_cohort(workspace.module, workspace.layout, start, members, settings,
                               max_bytes=self.max_bytes)
        except Exception as exc:  # an op torch.func cannot batch: never try again
            self.off = f"batched training failed ({type(exc).__name__}: {exc})"
            log.warning("batched local training is off: %s; clients train one at a time",
                        self.off)
            return
        for k, (cid, plan) in enumerate(zip(cids, plans, strict=True)):
            fit = (out.vectors[k], len(members[k].y), {"train_loss": float(out.losses[k])})
            self.ready[cid] = _Ready(start, plan.seed, settings, fit)


class _Served:
    """A simulated client whose fit is served from its cohort's batch when there is one;
    everything else is the client's own."""

    def __init__(self, cid: str, client: TorchClient, cohort: CohortTraining):
        self._cid, self._client, self._cohort = cid, client, cohort

    def __getattr__(self, name: str) -> Any:  # privacy, dp_sgd, layout, evaluate, ...
        return getattr(self._client, name)

    def fit_vector(self, vector: np.ndarray, config: dict[str, Any]) -> Fit:
        served = self._cohort.take(self._cid, self._client, vector, config)
        return served if served is not None else self._client.fit_vector(vector, config)

    def fit(self, parameters: Any, config: dict[str, Any]) -> Any:
        return self._client.fit(parameters, config)


def _records(client: TorchClient) -> int:
    return client.num_examples if isinstance(client, PopulationClient) else len(client.y)
