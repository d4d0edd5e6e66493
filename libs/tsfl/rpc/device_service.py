"""The DeviceService (:class:`DeviceServicer`): enrolment, tasks, model downloads,
evaluations, declines and the SecAgg+ and threshold-HE steps — every call authenticated
by the :class:`~tsfl.rpc.device_gate.DeviceGate`, uploads handled by
:class:`~tsfl.rpc.device_uploads.DeviceUploads`."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import xxhash

from tsfl.he.errors import HeError
from tsfl.pipeline.coordinator import Coordinator
from tsfl.pipeline.federated_eval import MAX_METRICS, EvaluationRefused
from tsfl.pipeline.secagg_stages import SecAggRefused
from tsfl.rpc import he_steps
from tsfl.rpc.common import CHUNK_BYTES
from tsfl.rpc.device_gate import DeviceGate
from tsfl.rpc.device_uploads import DeviceUploads
from tsfl.rpc.guard import valid_device_id
from tsfl.rpc.spool import UploadSpool
from tsfl.rpc.status import status_for
from tsfl.rpc.transient import broker_call
from tsfl.secagg.round import SecAggAbort
from tsfl.v1 import device_pb2, device_pb2_grpc
from tsfl.wire import he as he_wire
from tsfl.wire.envelope import WireError
from tsfl.wire.secagg import decode_request, encode_reply

if TYPE_CHECKING:  # passed in by the runtime, which sits above rpc
    from tsfl.runtime.jobs import JobManager


def _traits(t: device_pb2.DeviceTraits) -> dict[str, Any]:
    return {"battery": t.battery, "network": t.network,
            "free_memory_bytes": t.free_memory_bytes, "dataset_size": t.dataset_size}


class DeviceServicer(device_pb2_grpc.DeviceServiceServicer):
    """The device API. A call the broker's absence makes fail ends ``UNAVAILABLE`` (a
    transient error the SDK retries; :mod:`tsfl.rpc.transient`); registrations and
    uploads are refused at once while the broker is known to be down."""

    def __init__(self, coordinator: Coordinator, jobs: JobManager, *,
                 max_update_bytes: int = 2 * 1024**3, heartbeat_interval_s: int = 10,
                 spool: UploadSpool | None = None):
        self.coordinator = coordinator
        self.jobs = jobs
        self.max_update_bytes = max_update_bytes
        self.heartbeat_interval_s = heartbeat_interval_s
        self.gate = DeviceGate(coordinator)  # authentication, refusals, live ids
        self.uploads = DeviceUploads(coordinator, self.gate, spool or UploadSpool())

    @broker_call(fail_fast=True)
    async def Register(self, request: device_pb2.RegisterRequest,
                       context: grpc.aio.ServicerContext) -> device_pb2.RegisterResponse:
        if not valid_device_id(request.device_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "device id: 1-128 characters of letters, digits and . _ : @ -")
        if request.job_id not in self.coordinator.jobs:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no running job {request.job_id!r}")
        if not await self.jobs.enrollment_ok(request.job_id, request.enrollment_token):
            await self.gate.unauthenticated(context, request.job_id, "bad_enrollment_token",
                                        "bad enrollment token",
                                        {"device_id": request.device_id})
        job = self.coordinator.jobs[request.job_id]
        enrolled = await self.coordinator.store.count_devices(request.job_id)
        # threshold HE: the silos are the job's clients.count devices (each holds a share)
        cap = (job.spec.clients.count if job.he_shape is not None
               else 2 * job.spec.clients.count + 16)
        if enrolled >= cap and await self.coordinator.store.device_token_hash(
                request.job_id, request.device_id) is None:  # a newcomer, not a re-enrolment
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "this job's device registry is full" + (
                                    " (its key-holding silos are enrolled)"
                                    if job.he_shape is not None else ""))
        await self.gate.check_reenrolment(
            context, request.job_id, request.device_id,
            "this device id is enrolled and active: re-enrol with its session token "
            "(authorization metadata)")
        session = secrets.token_urlsafe(32)
        try:
            await self.coordinator.register_device(request.job_id, request.device_id, session,
                                                   _traits(request.traits))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        enrolled_in = self.coordinator.jobs.get(request.job_id)
        return device_pb2.RegisterResponse(
            session_token=session, heartbeat_interval_s=self.heartbeat_interval_s,
            layout_json=(json.dumps(enrolled_in.layout.to_json())
                         if enrolled_in is not None else ""))

    @broker_call()
    async def Heartbeat(self, request: device_pb2.HeartbeatRequest,
                        context: grpc.aio.ServicerContext) -> device_pb2.HeartbeatResponse:
        device = await self.gate.device(context, request.job_id)
        await self.coordinator.store.touch_device(request.job_id, device,
                                                  _traits(request.traits))
        available = await self.coordinator.task_available(device, request.job_id)
        return device_pb2.HeartbeatResponse(
            task_available=available,
            job_finished=request.job_id not in self.coordinator.jobs)

    @broker_call()
    async def GetTask(self, request: device_pb2.GetTaskRequest,
                      context: grpc.aio.ServicerContext) -> device_pb2.GetTaskResponse:
        if request.job_id not in self.coordinator.jobs:
            return device_pb2.GetTaskResponse(has_task=False, job_finished=True)
        device = await self.gate.device(context, request.job_id)
        task = await self.coordinator.get_task(device, request.job_id)
        if task is None:
            advice = self.coordinator.poll_after_s(request.job_id)
            return device_pb2.GetTaskResponse(has_task=False,
                                              retry_after_ms=int(1000 * advice))
        return device_pb2.GetTaskResponse(has_task=True, round=task.round,
                                          model_version=task.model_version,
                                          config_json=json.dumps(task.config))

    @broker_call()
    async def DownloadModel(self, request: device_pb2.DownloadModelRequest,
                            context: grpc.aio.ServicerContext
                            ) -> AsyncIterator[device_pb2.ModelChunk]:
        device = await self.gate.device(context, request.job_id)
        have = request.have_version if request.HasField("have_version") else None
        try:
            data = await self.coordinator.download_model(request.job_id, request.version,
                                                         have)
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        if not 0 <= request.offset <= len(data):
            await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                f"offset {request.offset} outside 0..{len(data)}")
        view = memoryview(data)
        digest = xxhash.xxh3_64_intdigest(view)
        started = time.perf_counter()
        for offset in range(request.offset, len(data), CHUNK_BYTES):
            yield device_pb2.ModelChunk(data=bytes(view[offset:offset + CHUNK_BYTES]),
                                        offset=offset, total_size=len(data),
                                        checksum=digest if offset == request.offset else 0)
        await self.coordinator.record_transfer(request.job_id, device, "down",
                                               len(data) - request.offset,
                                               time.perf_counter() - started)

    @broker_call()
    async def UploadStatus(self, request: device_pb2.UploadStatusRequest,
                           context: grpc.aio.ServicerContext
                           ) -> device_pb2.UploadStatusResponse:
        return await self.uploads.status(request, context)

    @broker_call(fail_fast=True)
    async def UploadUpdate(self, request_iterator: AsyncIterator[device_pb2.UploadChunk],
                           context: grpc.aio.ServicerContext) -> device_pb2.UploadResponse:
        return await self.uploads.receive(request_iterator, context)

    @broker_call()
    async def ReportEvaluation(self, request: device_pb2.EvaluationReport,
                               context: grpc.aio.ServicerContext) -> device_pb2.Ack:
        """A device's evaluation of the model it was sent (``round`` carries the model
        version): :mod:`tsfl.pipeline.federated_eval` checks and keeps it."""
        device = await self.gate.device(context, request.job_id)
        if len(request.metrics) > MAX_METRICS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"an evaluation has at most {MAX_METRICS} metrics")
        metrics = dict(request.metrics)
        try:
            taken = await self.coordinator.report_evaluation(
                device, request.job_id, request.round, request.loss, request.num_examples,
                metrics)
        except EvaluationRefused as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT if exc.code == "invalid"
                                else grpc.StatusCode.FAILED_PRECONDITION,
                                f"{exc.code}: {exc}")
        if taken:
            await self.coordinator.store.append_audit(request.job_id, "device.evaluation", {
                "device_id": device, "model_version": request.round, "loss": request.loss,
                "num_examples": request.num_examples, "metrics": metrics})
        return device_pb2.Ack()

    @broker_call()
    async def DeclineTask(self, request: device_pb2.DeclineRequest,
                          context: grpc.aio.ServicerContext) -> device_pb2.Ack:
        device = await self.gate.device(context, request.job_id)
        if len(request.code) > 64 or len(request.message) > 512:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "decline code ≤ 64 and message ≤ 512 characters")
        await self.coordinator.decline_task(device, request.job_id, request.round,
                                            request.code, request.message)
        return device_pb2.Ack()

    @broker_call()
    async def SecAggStage(self, request: device_pb2.SecAggRequest,
                          context: grpc.aio.ServicerContext) -> device_pb2.SecAggReply:
        device = await self.gate.device(context, request.job_id)
        job = self.coordinator.jobs.get(request.job_id)
        active = job.round if job is not None else None
        stages = active.secagg if active is not None else None
        if stages is None or active is None or active.number != request.round:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"wrong_round: no SecAgg+ round {request.round} is open")
        assert stages is not None
        try:
            payload = decode_request(request.stage, request.payload, stages.config.size,
                                     stages.config.ring.ring_bits, self.max_update_bytes)
        except WireError as exc:
            await self.coordinator.store.append_audit(request.job_id, "upload.refused", {
                "round": request.round, "client_id": device, "code": exc.code,
                "message": f"secagg: {exc}"})
            await context.abort(status_for(exc.code), f"{exc.code}: {exc}")
        try:
            reply = await self.coordinator.secagg(device, request.job_id, request.round,
                                                  request.stage, payload)
        except SecAggRefused as exc:
            await context.abort(status_for(exc.code), f"{exc.code}: {exc}")
        except SecAggAbort as exc:
            await context.abort(grpc.StatusCode.ABORTED, f"secagg_aborted: {exc}")
        return device_pb2.SecAggReply(payload=encode_reply(request.stage, reply))

    @broker_call()
    async def HeSetup(self, request: device_pb2.HeStepRequest,
                      context: grpc.aio.ServicerContext) -> device_pb2.HeStepReply:
        device = await self.gate.device(context, request.job_id)
        return await self._he_step(context, device, request, he_wire.SETUP_STAGES,
                                   self.coordinator.he_setup)

    @broker_call()
    async def HeOpen(self, request: device_pb2.HeStepRequest,
                     context: grpc.aio.ServicerContext) -> device_pb2.HeStepReply:
        device = await self.gate.device(context, request.job_id)

        async def step(client: str, job_id: str, stage: str, payload: dict[str, Any]
                       ) -> dict[str, Any]:
            return await self.coordinator.he_open(client, job_id, request.model_version,
                                                  stage, payload)

        return await self._he_step(context, device, request, he_wire.OPEN_STAGES, step)

    async def _he_step(self, context: grpc.aio.ServicerContext, device: str,
                       request: device_pb2.HeStepRequest, stages: tuple[str, ...],
                       step: Any) -> device_pb2.HeStepReply:
        """A threshold-HE step: the payload read within its job's bounds, the step run
        (it answers once complete), refusals ended with their status."""
        try:
            payload = he_steps.read_request(self.coordinator, request, stages)
        except HeError as exc:
            await self.gate.refusals.refused(
                self.gate.chain(request.job_id), "he.step.refused", exc.code,
                {"client_id": device, "stage": request.stage[:32], "message": str(exc)})
            await context.abort(he_steps.status_for(exc.code), f"{exc.code}: {exc}")
        try:
            reply = await step(device, request.job_id, request.stage, payload)
        except HeError as exc:
            await context.abort(he_steps.status_for(exc.code), f"{exc.code}: {exc}")
        return device_pb2.HeStepReply(payload=he_wire.pack(reply))
