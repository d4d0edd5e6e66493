"""A device's gRPC connection to the coordinator: :class:`GrpcTransport` implements
:class:`~tsfl.sdk.runner.Transport` over the DeviceService (resumable chunked model and
update transfers, SecAgg+ and threshold-HE steps), with :class:`TLSConfig` and
:func:`open_channel`. Transient failures (:data:`tsfl.rpc.retry.TRANSIENT`) of one
transfer are retried with capped exponential back-off (:class:`tsfl.rpc.retry.Backoff`)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import xxhash

from tsfl.core.layout import ParamLayout
from tsfl.errors import ErrorKind, TsflError
from tsfl.he import HeError
from tsfl.rpc.common import CHUNK_BYTES, DEVICE_HEADER, MAX_UNARY_BYTES, grpc_options
from tsfl.rpc.retry import TRANSIENT, Backoff
from tsfl.sdk.runner import RoundTask, UploadReceipt
from tsfl.secagg.ring import RingSpec
from tsfl.secagg.round import SecAggAbort
from tsfl.v1 import device_pb2, device_pb2_grpc
from tsfl.wire import he as he_wire
from tsfl.wire.envelope import WireError
from tsfl.wire.secagg import decode_reply, encode_request


@dataclass
class TLSConfig:
    """mTLS material (PEM bytes); ``ca`` alone authenticates the server only."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)


def open_channel(address: str, tls: TLSConfig | None = None, *,
                 own_connection: bool = False) -> grpc.aio.Channel:
    """A channel to the coordinator, which many devices of one process may share;
    ``own_connection``: its own HTTP/2 connection, never one shared with another channel
    of the same settings (gRPC's global subchannel pool would fold them into one)."""
    opts = [*grpc_options(MAX_UNARY_BYTES)]
    if own_connection:
        opts.append(("grpc.use_local_subchannel_pool", 1))
    return (grpc.aio.secure_channel(address, tls.credentials(), options=opts)
            if tls else grpc.aio.insecure_channel(address, options=opts))


class GrpcTransport:
    """Implements :class:`tsfl.sdk.runner.Transport` over the DeviceService."""

    def __init__(self, address: str, job_id: str, device_id: str, *,
                 tls: TLSConfig | None = None, chunk_bytes: int = CHUNK_BYTES,
                 attempts: int = 5, retry_s: float = 0.2,
                 max_model_bytes: int = 2 * 1024**3 + 1024**2,
                 channel: grpc.aio.Channel | None = None):
        self.address = address
        self.chunk_bytes = chunk_bytes
        self.attempts = attempts
        self.retry_s = retry_s
        #: waits between the attempts of one transfer
        self.backoff = Backoff(base_s=retry_s, cap_s=max(retry_s, 2.0))
        self.max_model_bytes = max_model_bytes
        self.job_id = job_id
        #: the coordinator's advice after its last "no task": ask again in about this long
        self.retry_after_s: float | None = None
        self.device_id = device_id
        self._ring_bits: dict[tuple[str, int], int] = {}  # SecAgg+ round -> ring width
        # ``channel``: one a fleet's devices share (its owner closes it), else our own
        self._owns_channel = channel is None
        self.channel = channel or open_channel(address, tls)
        self.stub = device_pb2_grpc.DeviceServiceStub(self.channel)
        self.session: str | None = None
        self.job_layout: ParamLayout | None = None  # from Register: what the job trains

    async def close(self) -> None:
        if self._owns_channel:
            await self.channel.close()

    def _md(self) -> tuple[tuple[str, str], ...]:
        return ((DEVICE_HEADER, self.device_id), ("authorization", f"Bearer {self.session}"))

    async def register(self, enrollment_token: str,
                       traits: device_pb2.DeviceTraits | None = None) -> None:
        resp = await self.stub.Register(device_pb2.RegisterRequest(
            job_id=self.job_id, device_id=self.device_id, enrollment_token=enrollment_token,
            traits=traits or device_pb2.DeviceTraits(battery=-1)))
        self.session = resp.session_token
        self.job_layout = (ParamLayout.from_json(json.loads(resp.layout_json))
                           if resp.layout_json else None)

    async def get_task(self, client_id: str) -> RoundTask | None:
        resp = await self.stub.GetTask(device_pb2.GetTaskRequest(job_id=self.job_id),
                                       metadata=self._md())
        if resp.job_finished:
            raise JobFinished(self.job_id)
        if not resp.has_task:
            self.retry_after_s = resp.retry_after_ms / 1000 if resp.retry_after_ms else None
            return None
        task = RoundTask(self.job_id, resp.round, resp.model_version,
                         json.loads(resp.config_json or "{}"))
        raw = task.config.get("secagg")
        if isinstance(raw, dict):  # the ring's width, for packing the masked vector
            try:
                ring = RingSpec(float(raw["ring"]["clip"]), int(raw["ring"]["quant_bits"]),
                                int(raw["ring"]["clients"]))
            except (KeyError, TypeError, ValueError):
                pass  # the runner refuses the config with a clear error
            else:
                self._ring_bits = {(task.job_id, task.round): ring.ring_bits}
        return task

    async def decline(self, client_id: str, job_id: str, round_number: int, code: str,
                      message: str) -> None:
        await self.stub.DeclineTask(device_pb2.DeclineRequest(
            job_id=job_id, round=round_number, code=code[:64], message=message[:512]),
            metadata=self._md())

    async def report_evaluation(self, client_id: str, job_id: str, version: int,
                                loss: float, num_examples: int,
                                metrics: dict[str, float]) -> None:
        await self.stub.ReportEvaluation(device_pb2.EvaluationReport(
            job_id=job_id, round=version, loss=loss, num_examples=num_examples,
            metrics=metrics), metadata=self._md())

    async def secagg(self, client_id: str, job_id: str, round_number: int, stage: str,
                     payload: dict[str, Any]) -> dict[str, Any]:
        """One SecAgg+ stage: waits (server-side) until the next stage begins. A refused
        or aborted stage raises :class:`SecAggAbort`: the device sits this round out."""
        ring_bits = self._ring_bits.get((job_id, round_number))
        if ring_bits is None:
            raise SecAggAbort(f"{stage}: no SecAgg+ task of round {round_number} was received")
        try:
            resp = await self.stub.SecAggStage(device_pb2.SecAggRequest(
                job_id=job_id, round=round_number, stage=stage,
                payload=encode_request(stage, payload, ring_bits)), metadata=self._md())
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION,
                              grpc.StatusCode.ALREADY_EXISTS,
                              grpc.StatusCode.INVALID_ARGUMENT):
                raise SecAggAbort(f"{stage}: {exc.details()}") from None
            raise
        try:
            return decode_reply(stage, resp.payload)
        except WireError as exc:
            raise SecAggAbort(f"{stage}: {exc}") from None

    async def he_setup(self, client_id: str, job_id: str, stage: str,
                       payload: dict[str, Any]) -> dict[str, Any]:
        """One step of the threshold-HE key ceremony (or ``status``, ``abort``);
        answered once the step is complete. Refusals and failures raise
        :class:`~tsfl.he.HeError` with the server's code (``aborted``: the ceremony
        failed, and why)."""
        return await self._he_step(self.stub.HeSetup, job_id, 0, stage, payload)

    async def he_open(self, client_id: str, job_id: str, version: int, stage: str,
                      payload: dict[str, Any]) -> dict[str, Any]:
        """A threshold-HE step on model ``version``: commit to a section, or open the
        model's encrypted sum (sketch, partial)."""
        return await self._he_step(self.stub.HeOpen, job_id, version, stage, payload)

    async def _he_step(self, method: Any, job_id: str, version: int, stage: str,
                       payload: dict[str, Any]) -> dict[str, Any]:
        """The same message again on a transient failure (the server takes a repeat of
        a step's message as the first); a refusal as :class:`HeError`."""
        request = device_pb2.HeStepRequest(job_id=job_id, model_version=version,
                                           stage=stage, payload=he_wire.pack(payload))
        for attempt in range(self.attempts):
            try:
                resp = await method(request, metadata=self._md())
            except grpc.aio.AioRpcError as exc:
                if exc.code() in TRANSIENT and attempt + 1 < self.attempts:
                    await asyncio.sleep(self.backoff.delay(attempt))
                    continue
                if exc.code() in TRANSIENT or exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    raise
                code, _, message = (exc.details() or "").partition(": ")
                raise HeError(code if message else exc.code().name.lower(),
                              message or exc.details() or "") from None
            return he_wire.unpack(resp.payload, he_wire.MAX_MESSAGE_BYTES)
        raise ConnectionError(f"HE step {stage} did not complete")

    async def download_model(self, job_id: str, version: int,
                             have_version: int | None = None, client_id: str = ""
                             ) -> bytearray:
        """The model frame, resuming a broken stream where it stopped.

        The buffer is allocated once, at the size the first chunk declares: receiving an
        N-byte model holds N bytes plus one chunk.
        """
        buf: bytearray | None = None
        received, total, digest = 0, None, None
        for attempt in range(self.attempts):
            try:
                async for chunk in self.stub.DownloadModel(device_pb2.DownloadModelRequest(
                        job_id=job_id, version=version, offset=received,
                        have_version=have_version), metadata=self._md()):
                    if chunk.offset != received:
                        raise ConnectionError("model chunks out of order")
                    if total is None:
                        total, digest = chunk.total_size, chunk.checksum
                        if not 0 < total <= self.max_model_bytes:
                            raise ConnectionError(f"model of {total} bytes refused")
                        buf = bytearray(total)
                    if buf is None or received + len(chunk.data) > total:
                        raise ConnectionError("model stream longer than it declared")
                    buf[received:received + len(chunk.data)] = chunk.data
                    received += len(chunk.data)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in TRANSIENT:
                    raise
                if attempt + 1 < self.attempts:
                    await asyncio.sleep(self.backoff.delay(attempt))
        if buf is None or received != total or xxhash.xxh3_64_intdigest(buf) != digest:
            raise ConnectionError("model download incomplete or corrupted")
        return buf

    async def upload(self, client_id: str, data: bytes | bytearray) -> UploadReceipt:
        """Send an update; a broken stream resumes at the offset the server holds."""
        view = memoryview(data)
        digest = xxhash.xxh3_64_intdigest(view)
        upload_id = uuid.uuid4().hex
        offset = 0
        for attempt in range(self.attempts):
            if attempt:
                status = await self.stub.UploadStatus(device_pb2.UploadStatusRequest(
                    job_id=self.job_id, upload_id=upload_id), metadata=self._md())
                offset = status.received if status.known else 0
            try:
                resp = await self.stub.UploadUpdate(
                    self._chunks(view, digest, upload_id, offset), metadata=self._md())
            except grpc.aio.AioRpcError as exc:
                if _broken_stream(exc):
                    if attempt + 1 < self.attempts:
                        await asyncio.sleep(self.backoff.delay(attempt))
                        continue
                    raise
                code = (exc.details() or "").split(":", 1)[0]
                return UploadReceipt(False, code or exc.code().name.lower(),
                                     exc.details() or "")
            return UploadReceipt(resp.accepted, resp.code, resp.message)
        raise ConnectionError("upload did not complete")

    def _chunks(self, view: memoryview, digest: int, upload_id: str, offset: int
                ) -> Iterator[device_pb2.UploadChunk]:
        for pos in range(offset, max(len(view), 1), self.chunk_bytes):
            part = bytes(view[pos:pos + self.chunk_bytes])
            if pos == offset:
                yield device_pb2.UploadChunk(job_id=self.job_id, total_size=len(view),
                                             checksum=digest, data=part,
                                             upload_id=upload_id, offset=offset)
            else:
                yield device_pb2.UploadChunk(data=part)


def _broken_stream(exc: grpc.aio.AioRpcError) -> bool:
    """A transfer that stopped half-way (resume it), not one the server refused."""
    if exc.code() in TRANSIENT:
        return True
    return exc.code() == grpc.StatusCode.DATA_LOSS and "ended after" in (exc.details() or "")


class JobFinished(TsflError):
    """The job is over: the device can stop."""

    kind = ErrorKind.PRECONDITION


