"""The coordinator's gRPC server: DeviceService, AdminService, the vertical jobs' party
relay (:mod:`tsfl.rpc.vertical_service`) and the health service."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import xxhash
from grpc_health.v1 import health
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from tsfl.he.errors import HeError
from tsfl.pipeline.coordinator import SYSTEM_AUDIT, Coordinator, UploadRefused
from tsfl.pipeline.federated_eval import MAX_METRICS, EvaluationRefused
from tsfl.pipeline.secagg_stages import SecAggRefused
from tsfl.rpc import he_steps
from tsfl.rpc.admin_service import AdminServicer
from tsfl.rpc.common import (
    CHUNK_BYTES,
    DEVICE_HEADER,
    MAX_UNARY_BYTES,
    SERVER_OPTIONS,
    grpc_options,
)
from tsfl.rpc.guard import PeerLimiter, RefusalLog, valid_device_id
from tsfl.rpc.health import COORDINATOR_HEALTH, health_servicer, set_serving
from tsfl.rpc.spool import PartialUpload, SpoolError, UploadSpool
from tsfl.rpc.status import status_for
from tsfl.rpc.transient import broker_call
from tsfl.rpc.vertical_service import add_party_relay
from tsfl.runtime.jobs import JobManager
from tsfl.secagg.protocol import SecAggAbort
from tsfl.v1 import admin_pb2_grpc, device_pb2, device_pb2_grpc
from tsfl.wire import he as he_wire
from tsfl.wire.envelope import WireError
from tsfl.wire.secagg import decode_request, encode_reply


def _traits(t: device_pb2.DeviceTraits) -> dict[str, Any]:
    return {"battery": t.battery, "network": t.network,
            "free_memory_bytes": t.free_memory_bytes, "dataset_size": t.dataset_size}


def _peer_host(peer: str) -> str:
    """``ipv4:1.2.3.4:5678`` → ``ipv4:1.2.3.4``: a reconnect gets no fresh bucket."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


#: an upload stream silent this long is dropped
STREAM_IDLE_S = 30.0
#: a device authenticated this recently is live: its id cannot be re-enrolled by others
LIVE_S = 60.0


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
        self.spool = spool or UploadSpool()
        self.limiter = PeerLimiter()
        self.refusals = RefusalLog(self._audit_refusal)
        self._live: dict[tuple[str, str], float] = {}  # (job, device) -> last authenticated

    async def _audit_refusal(self, chain: str, kind: str, payload: dict[str, Any]) -> None:
        await self.coordinator.store.append_audit(chain, kind, payload)

    async def _unauthenticated(self, context: grpc.aio.ServicerContext, job_id: str,
                               code: str, message: str, detail: dict[str, Any]) -> None:
        """Refuse a call without valid credentials: rate-limited per peer, audited in
        aggregate, and the same answer whether or not the device is enrolled."""
        peer = _peer_host(context.peer() or "?")
        if not self.limiter.allowed(peer):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "too many refused calls from this peer; slow down")
        self.limiter.charge(peer)
        chain = job_id if job_id in self.coordinator.jobs else SYSTEM_AUDIT
        await self.refusals.refused(chain, "call.refused", code, {"peer": peer, **detail})
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def _refuse(self, context: grpc.aio.ServicerContext, job_id: str, device: str,
                      code: str, status: grpc.StatusCode, message: str) -> None:
        """Audit a refused call in aggregate (on the job's chain, or the system chain: one
        row per code and window, with its count), then abort it."""
        chain = job_id if job_id in self.coordinator.jobs else SYSTEM_AUDIT
        await self.refusals.refused(chain, "upload.refused", code,
                                    {"client_id": device, "message": message})
        await context.abort(status, f"{code}: {message}")

    async def _device(self, context: grpc.aio.ServicerContext, job_id: str) -> str:
        """The authenticated device id of a call, or an UNAUTHENTICATED/NOT_FOUND abort."""
        md = dict(context.invocation_metadata() or ())
        device = md.get(DEVICE_HEADER, "")
        auth = md.get("authorization", "")
        if not valid_device_id(device) or not auth.startswith("Bearer "):
            await self._unauthenticated(context, job_id, "unauthenticated",
                                        "missing or malformed device id or session token",
                                        {})
        if not await self.coordinator.authenticate(job_id, device, auth.removeprefix("Bearer ")):
            # one answer for "not enrolled" and "wrong token": enrolment is not revealed
            await self._unauthenticated(context, job_id, "bad_credentials",
                                        "invalid device credentials", {"device_id": device})
        self._live[(job_id, device)] = time.monotonic()
        if len(self._live) > 1_000_000:
            self._live.clear()
        return device

    @broker_call(fail_fast=True)
    async def Register(self, request: device_pb2.RegisterRequest,
                       context: grpc.aio.ServicerContext) -> device_pb2.RegisterResponse:
        if not valid_device_id(request.device_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "device id: 1-128 characters of letters, digits and . _ : @ -")
        if request.job_id not in self.coordinator.jobs:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no running job {request.job_id!r}")
        if not await self.jobs.enrollment_ok(request.job_id, request.enrollment_token):
            await self._unauthenticated(context, request.job_id, "bad_enrollment_token",
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
        key = (request.job_id, request.device_id)
        if time.monotonic() - self._live.get(key, -1e9) < LIVE_S:
            # a live device's id is taken: only its own session may re-enrol it
            md = dict(context.invocation_metadata() or ())
            current = md.get("authorization", "").removeprefix("Bearer ")
            if not await self.coordinator.authenticate(request.job_id, request.device_id,
                                                       current):
                await self._unauthenticated(
                    context, request.job_id, "device_id_taken",
                    "this device id is enrolled and active: re-enrol with its session "
                    "token (authorization metadata)", {"device_id": request.device_id})
        session = secrets.token_urlsafe(32)
        try:
            await self.coordinator.register_device(request.job_id, request.device_id, session,
                                                   _traits(request.traits))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        job = self.coordinator.jobs.get(request.job_id)
        return device_pb2.RegisterResponse(
            session_token=session, heartbeat_interval_s=self.heartbeat_interval_s,
            layout_json=json.dumps(job.layout.to_json()) if job is not None else "")

    @broker_call()
    async def Heartbeat(self, request: device_pb2.HeartbeatRequest,
                        context: grpc.aio.ServicerContext) -> device_pb2.HeartbeatResponse:
        device = await self._device(context, request.job_id)
        await self.coordinator.store.touch_device(request.job_id, device,
                                                  _traits(request.traits))
        task = await self.coordinator.get_task(device, request.job_id)
        return device_pb2.HeartbeatResponse(
            task_available=task is not None,
            job_finished=request.job_id not in self.coordinator.jobs)

    @broker_call()
    async def GetTask(self, request: device_pb2.GetTaskRequest,
                      context: grpc.aio.ServicerContext) -> device_pb2.GetTaskResponse:
        if request.job_id not in self.coordinator.jobs:
            return device_pb2.GetTaskResponse(has_task=False, job_finished=True)
        device = await self._device(context, request.job_id)
        task = await self.coordinator.get_task(device, request.job_id)
        if task is None:
            return device_pb2.GetTaskResponse(has_task=False)
        return device_pb2.GetTaskResponse(has_task=True, round=task.round,
                                          model_version=task.model_version,
                                          config_json=json.dumps(task.config))

    @broker_call()
    async def DownloadModel(self, request: device_pb2.DownloadModelRequest,
                            context: grpc.aio.ServicerContext
                            ) -> AsyncIterator[device_pb2.ModelChunk]:
        device = await self._device(context, request.job_id)
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
        device = await self._device(context, request.job_id)
        upload = self.spool.get(request.job_id, device, request.upload_id)
        if upload is None:
            return device_pb2.UploadStatusResponse(known=False)
        return device_pb2.UploadStatusResponse(known=True, received=upload.received,
                                               total_size=upload.total)

    @broker_call(fail_fast=True)
    async def UploadUpdate(self, request_iterator: AsyncIterator[device_pb2.UploadChunk],
                           context: grpc.aio.ServicerContext) -> device_pb2.UploadResponse:
        upload: PartialUpload | None = None
        resumable = False
        started = time.perf_counter()
        first_offset = 0
        chunks = request_iterator.__aiter__()
        try:
            while True:
                try:  # a stream that stops sending is dropped (its budget comes back)
                    chunk = await asyncio.wait_for(chunks.__anext__(), STREAM_IDLE_S)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                        f"no data for {STREAM_IDLE_S:.0f} s: stream dropped "
                                        "(a resumable upload continues at UploadStatus's "
                                        "offset)")
                if upload is None:
                    upload, resumable = await self._begin_upload(chunk, context)
                    first_offset = upload.received
                try:
                    upload.write(chunk.data)
                except SpoolError as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            if upload is not None:
                if resumable:
                    self.spool.release(upload)
                else:
                    self.spool.finish(upload)
        if upload is None:  # no chunk, so no job or device named: the system chain
            await self.refusals.refused(SYSTEM_AUDIT, "upload.refused", "empty",
                                        {"peer": _peer_host(context.peer() or "?")})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty upload")
        if not upload.complete:
            if not resumable:  # a resumable one may still be resumed: not a refusal yet
                await self.refusals.refused(
                    upload.job_id if upload.job_id in self.coordinator.jobs else SYSTEM_AUDIT,
                    "upload.refused", "truncated",
                    {"client_id": upload.device, "received": upload.received,
                     "total": upload.total})
            await context.abort(grpc.StatusCode.DATA_LOSS, (
                f"upload ended after {upload.received} of {upload.total} bytes" +
                (f"; resume at offset {upload.received}" if resumable else "")))
        if resumable:
            self.spool.finish(upload)
        if xxhash.xxh3_64_intdigest(upload.buf) != upload.checksum:
            await self._refuse(context, upload.job_id, upload.device, "checksum",
                               grpc.StatusCode.DATA_LOSS, "transfer checksum mismatch")
        await self.coordinator.record_transfer(upload.job_id, upload.device, "up",
                                               upload.total - first_offset,
                                               time.perf_counter() - started)
        receipt = await self.coordinator.upload(upload.device, upload.buf)
        if not receipt.accepted:
            await context.abort(status_for(receipt.code), f"{receipt.code}: {receipt.message}")
        return device_pb2.UploadResponse(accepted=True, code="ok")

    async def _begin_upload(self, chunk: device_pb2.UploadChunk,
                            context: grpc.aio.ServicerContext) -> tuple[PartialUpload, bool]:
        """The buffer a stream writes into, checked before a byte is held: the device must
        be expected to upload now, and its declared size within what this job's updates
        take (:meth:`Coordinator.upload_bound`); every buffer counts in the spool's budgets."""
        device = await self._device(context, chunk.job_id)
        try:
            bound = self.coordinator.upload_bound(chunk.job_id, device)
        except UploadRefused as exc:
            await self._refuse(context, chunk.job_id, device, exc.code,
                               status_for(exc.code), str(exc))
            raise  # unreachable: _refuse aborts
        if not 0 < chunk.total_size <= bound:
            await self._refuse(context, chunk.job_id, device, "too_large",
                               grpc.StatusCode.RESOURCE_EXHAUSTED, (
                                   f"update of {chunk.total_size} bytes: this job's updates "
                                   f"take at most {bound}"))
        if not chunk.upload_id:
            if chunk.offset:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "an offset needs an upload_id")
            try:
                return self.spool.hold(chunk.job_id, device, chunk.total_size,
                                       chunk.checksum), False
            except SpoolError as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        if len(chunk.upload_id) > 128:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "upload_id too long")
        try:
            return self.spool.begin(chunk.job_id, device, chunk.upload_id, chunk.total_size,
                                    chunk.checksum, chunk.offset), True
        except SpoolError as exc:
            status = {"resume": grpc.StatusCode.OUT_OF_RANGE,
                      "mismatch": grpc.StatusCode.FAILED_PRECONDITION,
                      "busy": grpc.StatusCode.RESOURCE_EXHAUSTED}[exc.code]
            await context.abort(status, f"{exc.code}: {exc}")
            raise  # unreachable: abort raises

    @broker_call()
    async def ReportEvaluation(self, request: device_pb2.EvaluationReport,
                               context: grpc.aio.ServicerContext) -> device_pb2.Ack:
        """A device's evaluation of the model it was sent (``round`` carries the model
        version): :mod:`tsfl.pipeline.federated_eval` checks and keeps it."""
        device = await self._device(context, request.job_id)
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
        device = await self._device(context, request.job_id)
        if len(request.code) > 64 or len(request.message) > 512:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "decline code ≤ 64 and message ≤ 512 characters")
        await self.coordinator.decline_task(device, request.job_id, request.round,
                                            request.code, request.message)
        return device_pb2.Ack()

    @broker_call()
    async def SecAggStage(self, request: device_pb2.SecAggRequest,
                          context: grpc.aio.ServicerContext) -> device_pb2.SecAggReply:
        device = await self._device(context, request.job_id)
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
        device = await self._device(context, request.job_id)
        return await self._he_step(context, device, request, he_wire.SETUP_STAGES,
                                   self.coordinator.he_setup)

    @broker_call()
    async def HeOpen(self, request: device_pb2.HeStepRequest,
                     context: grpc.aio.ServicerContext) -> device_pb2.HeStepReply:
        device = await self._device(context, request.job_id)

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
            chain = request.job_id if request.job_id in self.coordinator.jobs else SYSTEM_AUDIT
            await self.refusals.refused(chain, "he.step.refused", exc.code, {
                "client_id": device, "stage": request.stage[:32], "message": str(exc)})
            await context.abort(he_steps.status_for(exc.code), f"{exc.code}: {exc}")
        try:
            reply = await step(device, request.job_id, request.stage, payload)
        except HeError as exc:
            await context.abort(he_steps.status_for(exc.code), f"{exc.code}: {exc}")
        return device_pb2.HeStepReply(payload=he_wire.pack(reply))


async def start_coordinator_server(coordinator: Coordinator, jobs: JobManager, address: str,
                                   *, credentials: grpc.ServerCredentials | None = None
                                   ) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    # every device and admin call is a server span (a no-op until a tracer provider is
    # installed: tsfl.runtime.observability), continuing a caller's W3C trace context
    server = grpc.aio.server(interceptors=[aio_server_interceptor()],
                             options=[*grpc_options(MAX_UNARY_BYTES), *SERVER_OPTIONS])
    devices = DeviceServicer(coordinator, jobs, max_update_bytes=coordinator.max_update_bytes)
    device_pb2_grpc.add_DeviceServiceServicer_to_server(devices, server)
    add_party_relay(server, devices, jobs.vertical)  # vertical jobs' parties, same auth
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(coordinator, jobs), server)
    hs = health_servicer(server)
    port = (server.add_secure_port(address, credentials) if credentials
            else server.add_insecure_port(address))
    await server.start()
    await set_serving(hs, True, COORDINATOR_HEALTH)
    return server, port, hs
