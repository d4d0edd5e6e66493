"""The client side of the protocol, independent of the transport.

A round for a device: fetch its task, download the global model, train, send the
delta. The same runner drives simulated devices in-process and real devices over
gRPC; only the :class:`Transport` differs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tsfl.core.layout import ParamLayout
from tsfl.core.protocol import RoundTask, UploadReceipt
from tsfl.core.update import Update
from tsfl.he.threshold.keys import KeyShare
from tsfl.sdk.client import NumPyClient
from tsfl.sdk.compression import UplinkConfig, UplinkEncoder
from tsfl.sdk.he import HeDevice
from tsfl.sdk.local_dp import apply_local_dp
from tsfl.sdk.privacy_guard import DevicePrivacy, LocalDpSettings, TaskRefused
from tsfl.sdk.secagg import SecAggDevice, secure_upload
from tsfl.sdk.task_settings import check_task_settings
from tsfl.wire.envelope import WireError
from tsfl.wire.messages import decode_model, encode_update

log = logging.getLogger("tsfl.sdk")


class Transport(Protocol):
    """How a client reaches the coordinator."""

    async def get_task(self, client_id: str) -> RoundTask | None: ...

    async def download_model(self, job_id: str, version: int,
                             have_version: int | None = None, client_id: str = ""
                             ) -> bytes | bytearray:
        """The model frame; a delta against ``have_version`` when the server has one."""
        ...

    async def upload(self, client_id: str, data: bytes) -> UploadReceipt: ...

    async def secagg(self, client_id: str, job_id: str, round_number: int, stage: str,
                     payload: dict[str, Any]) -> dict[str, Any]:
        """One SecAgg+ stage message; returns when the server starts the next stage."""
        ...

    async def decline(self, client_id: str, job_id: str, round_number: int, code: str,
                      message: str) -> None:
        """Tell the coordinator this device refuses the round's task (and why)."""
        ...

    # Optional: ``report_evaluation(client_id, job_id, version, loss, num_examples,
    # metrics)``, this device's evaluation of the model it was sent, when the task asks
    # (``config["evaluate"]``: :mod:`tsfl.pipeline.federated_eval`).
    # Optional (threshold HE): ``he_open(client_id, job_id, version, stage, payload)``, one
    # step of opening a model's encrypted sum (:mod:`tsfl.he.threshold.opening`), and
    # ``he_setup(client_id, job_id, stage, payload)``, one step of the silos' key ceremony
    # (or ``status``, ``abort``: :mod:`tsfl.sdk.he_silo`); each returns when the step is
    # complete. The in-process transport and gRPC (``HeOpen``, ``HeSetup``) carry them.


@dataclass
class RoundOutcome:
    task: RoundTask
    receipt: UploadReceipt
    bytes_down: int
    bytes_up: int
    metrics: dict[str, float]


@dataclass
class TrainedUpdate:
    """A device's trained round, between :meth:`ClientRunner.train` and ``send``."""

    task: RoundTask
    global_vec: np.ndarray
    delta: np.ndarray
    num_examples: int
    metrics: dict[str, float]
    bytes_down: int
    he: Any = None  # (key set, HeJob) for HE jobs


class ClientRunner:
    """Runs one client's participation in rounds over a transport.

    ``privacy`` is the device owner's (:class:`~tsfl.sdk.privacy_guard.DevicePrivacy`:
    CSPRNG, floor, ledger); by default the client's own (a ``TorchClient`` has one), else
    a fresh one. Under DP (local DP or the client's DP-SGD) an update travels alone: no
    metrics, and one example (so no silo size leaks and every vote weighs the same).
    ``secagg`` (:class:`~tsfl.sdk.secagg.SecAggDevice`): the device's identity, the
    authorities it trusts and its floor for SecAgg+ jobs; by default the client's
    ``secagg_device`` attribute, else none (the device then refuses SecAgg+ rounds).
    """

    def __init__(self, client_id: str, client: NumPyClient, transport: Transport,
                 layout: ParamLayout, *, offload: bool = False, he: HeDevice | None = None,
                 privacy: DevicePrivacy | None = None, secagg: SecAggDevice | None = None):
        self.client_id = client_id
        self.privacy = privacy or getattr(client, "privacy", None) or DevicePrivacy()
        self.he = he or HeDevice()  # secret key sets of HE jobs
        # SecAgg+: identity, trusted authorities, floor (default: the client's own)
        self.secagg = secagg or getattr(client, "secagg_device", None) or SecAggDevice()
        self.client = client
        self.transport = transport
        self.layout = layout
        self.offload = offload  # run training in a worker thread (real devices)
        self.uplink = UplinkEncoder()  # error-feedback residual, kept across rounds
        self.held: tuple[int, np.ndarray] | None = None  # (version, model): downlink deltas

    def _fit(self, vector: np.ndarray, config: dict[str, Any]
             ) -> tuple[np.ndarray, int, dict[str, float]]:
        fit_vector = getattr(self.client, "fit_vector", None)
        if fit_vector is not None:
            return fit_vector(vector, config)
        params, n, metrics = self.client.fit(self.layout.unflatten_list(vector), config)
        return self.layout.flatten_list(params), n, metrics

    async def run_task(self, task: RoundTask) -> RoundOutcome:
        """Train and send; a task this device refuses (privacy floor, budget, malformed
        settings) is declined to the coordinator instead."""
        try:
            trained = await self.train(task)
        except TaskRefused as exc:
            await self.transport.decline(self.client_id, task.job_id, task.round, exc.code,
                                         exc.message)
            return RoundOutcome(task, UploadReceipt(False, "refused", exc.message), 0, 0, {})
        return await self.send(trained)

    def _private(self, task: RoundTask) -> bool:
        return "local_dp" in task.config or getattr(self.client, "dp_sgd", None) is not None

    async def train(self, task: RoundTask) -> TrainedUpdate:
        """Download the model and train: the update, not yet sent (local DP: clipped,
        noised and charged to the device's ledger). Raises :class:`TaskRefused`."""
        # checked before any work is done
        check_task_settings(task.config)
        local: LocalDpSettings | None = self.privacy.check_task(
            task.job_id, task.config, self.layout.total_size,
            trains_with_dp_sgd=getattr(self.client, "dp_sgd", None) is not None)
        delta_ok = task.config.get("downlink") == "delta"
        have = self.held[0] if delta_ok and self.held is not None else None
        model_bytes = await self.transport.download_model(task.job_id, task.model_version,
                                                          have, self.client_id)
        base = self.held[1] if self.held is not None else None
        try:
            _, _, global_vec, _ = decode_model(model_bytes, self.layout, base=base)
        except WireError as exc:
            if exc.code != "base":
                raise
            self.held = None  # our copy is not what the server thinks: fetch it whole
            model_bytes = await self.transport.download_model(
                task.job_id, task.model_version, None, self.client_id)
            _, _, global_vec, _ = decode_model(model_bytes, self.layout)
        he = self.he.job(task.config["he"], self.layout) if "he" in task.config else None
        if he is not None:  # threshold keying: t silos open the sum together first
            global_vec = await self.he.open_model_async(
                self.transport, self.client_id, task.job_id, task.model_version, model_bytes,
                global_vec, *he)
        if delta_ok:
            self.held = (task.model_version, np.array(global_vec, copy=True))
        if task.config.get("evaluate") and not self._private(task):
            await self._report_evaluation(task, global_vec)
        if self.offload:
            new_vec, n, metrics = await asyncio.to_thread(self._fit, global_vec, task.config)
        else:
            new_vec, n, metrics = self._fit(global_vec, task.config)
        delta = np.subtract(new_vec, global_vec, dtype=np.float32)
        if local is not None:  # clip, noise and charge before anything leaves the device
            delta = apply_local_dp(delta, local, self.privacy.source(task.job_id))
            self.privacy.charge_local(task.job_id, local, self.layout.total_size)
        if self._private(task):  # the update travels alone
            n, metrics = 1, {}
        return TrainedUpdate(task, global_vec, delta, int(n), metrics, len(model_bytes), he)

    async def _report_evaluation(self, task: RoundTask, global_vec: np.ndarray) -> None:
        """Evaluate the model this task was sent on local data and report it (best
        effort: a client that cannot evaluate, or a refused report, costs nothing)."""
        report = getattr(self.transport, "report_evaluation", None)
        if report is None:
            return
        params = self.layout.unflatten_list(global_vec)
        try:
            if self.offload:
                loss, n, metrics = await asyncio.to_thread(self.client.evaluate, params,
                                                           dict(task.config))
            else:
                loss, n, metrics = self.client.evaluate(params, dict(task.config))
            await report(self.client_id, task.job_id, task.model_version, float(loss),
                         int(n), {str(k): float(v) for k, v in (metrics or {}).items()})
        except NotImplementedError:
            return
        except Exception as exc:  # evaluation never costs the round
            log.info("%s: evaluation of v%d not reported: %s", self.client_id,
                     task.model_version, exc)

    async def send(self, trained: TrainedUpdate) -> RoundOutcome:
        """Send a trained update: uploaded (encoded, HE-encrypted) or, for a SecAgg+ job,
        masked through the protocol's stages."""
        task, global_vec, delta, n, metrics, he = (trained.task, trained.global_vec,
                                                   trained.delta, trained.num_examples,
                                                   trained.metrics, trained.he)
        if "secagg" in task.config:  # masked through the five stages, never uploaded
            sent = await secure_upload(self.transport, self.client_id, task.job_id,
                                       task.round, task.config["secagg"], delta, n,
                                       metrics, task.config.get("seed"), self.secagg)
            return RoundOutcome(task, UploadReceipt(True), trained.bytes_down, sent, metrics)
        sealed, base = None, global_vec
        if he is not None:  # the hidden coordinates leave encrypted; the rest as usual
            keys, he_job = he
            seal = functools.partial(self.he.seal_update, keys, he_job, global_vec, delta,
                                     int(n), job_id=task.job_id, round_number=task.round)
            delta, sealed = await asyncio.to_thread(seal) if self.offload else seal()
            base = global_vec[he[1].clear]
            if isinstance(he[0], KeyShare):  # commit before reveal (threshold keying)
                await self.he.commit_section(self.transport, self.client_id, task.job_id,
                                             task.model_version, task.round, he[0])
        encoded = None
        if "compression" in task.config:
            encoded = self.uplink.encode(delta, base,
                                         UplinkConfig.from_task(task.config["compression"]),
                                         task.config.get("seed"))
        update = Update(job_id=task.job_id, round=task.round, client_id=self.client_id,
                        model_version=task.model_version, num_examples=int(n), delta=delta,
                        metrics=metrics, codecs=("f32",))
        data = encode_update(update, self.layout, encoded, sealed)
        receipt = await self.transport.upload(self.client_id, data)
        return RoundOutcome(task, receipt, trained.bytes_down, len(data), metrics)

    async def serve_he(self, job_id: str) -> None:
        """Threshold HE, while no task is due: take part in the job's key ceremony and
        in opening the current model (:func:`tsfl.sdk.he_silo.serve`)."""
        await self.he.serve(self.transport, self.client_id, job_id, self.layout)

    async def run_once(self) -> RoundOutcome | None:
        """Ask for a task and run it; ``None`` when there is nothing to do."""
        task = await self.transport.get_task(self.client_id)
        if task is None:
            return None
        return await self.run_task(task)
