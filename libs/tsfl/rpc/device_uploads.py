"""Device uploads over the DeviceService: resumable chunked streams into a bounded
spool (:mod:`tsfl.rpc.spool`), each checked before a byte is held (the device is
expected, the declared size within the job's bound), checksummed, and handed to the
coordinator; every refusal audited through the :class:`~tsfl.rpc.device_gate.DeviceGate`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import xxhash

from tsfl.pipeline.coordinator import SYSTEM_AUDIT, Coordinator, UploadRefused
from tsfl.rpc.device_gate import DeviceGate, peer_host
from tsfl.rpc.spool import PartialUpload, SpoolError, UploadSpool
from tsfl.rpc.status import status_for
from tsfl.v1 import device_pb2

#: an upload stream silent this long is dropped
STREAM_IDLE_S = 30.0


class DeviceUploads:
    """UploadStatus and UploadUpdate: where a resumable upload stands, and one stream."""

    def __init__(self, coordinator: Coordinator, gate: DeviceGate, spool: UploadSpool):
        self.coordinator = coordinator
        self.gate = gate
        self.spool = spool

    async def status(self, request: device_pb2.UploadStatusRequest,
                     context: grpc.aio.ServicerContext) -> device_pb2.UploadStatusResponse:
        """How much of a resumable upload the server holds."""
        device = await self.gate.device(context, request.job_id)
        upload = self.spool.get(request.job_id, device, request.upload_id)
        if upload is None:
            return device_pb2.UploadStatusResponse(known=False)
        return device_pb2.UploadStatusResponse(known=True, received=upload.received,
                                               total_size=upload.total)

    async def receive(self, request_iterator: AsyncIterator[device_pb2.UploadChunk],
                      context: grpc.aio.ServicerContext) -> device_pb2.UploadResponse:
        """One upload stream, to the coordinator once complete and intact."""
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
                    upload, resumable = await self._begin(chunk, context)
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
            await self.gate.refusals.refused(SYSTEM_AUDIT, "upload.refused", "empty",
                                             {"peer": peer_host(context.peer() or "?")})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty upload")
        assert upload is not None  # abort raised otherwise
        if not upload.complete:
            if not resumable:  # a resumable one may still be resumed: not a refusal yet
                await self.gate.refusals.refused(
                    self.gate.chain(upload.job_id),
                    "upload.refused", "truncated",
                    {"client_id": upload.device, "received": upload.received,
                     "total": upload.total})
            await context.abort(grpc.StatusCode.DATA_LOSS, (
                f"upload ended after {upload.received} of {upload.total} bytes" +
                (f"; resume at offset {upload.received}" if resumable else "")))
        if resumable:
            self.spool.finish(upload)
        if xxhash.xxh3_64_intdigest(upload.buf) != upload.checksum:
            await self.gate.refuse(context, upload.job_id, upload.device, "checksum",
                               grpc.StatusCode.DATA_LOSS, "transfer checksum mismatch")
        await self.coordinator.record_transfer(upload.job_id, upload.device, "up",
                                               upload.total - first_offset,
                                               time.perf_counter() - started)
        receipt = await self.coordinator.upload(upload.device, upload.buf)
        if not receipt.accepted:
            await context.abort(status_for(receipt.code), f"{receipt.code}: {receipt.message}")
        return device_pb2.UploadResponse(accepted=True, code="ok")

    async def _begin(self, chunk: device_pb2.UploadChunk,
                     context: grpc.aio.ServicerContext) -> tuple[PartialUpload, bool]:
        """The buffer a stream writes into, checked before a byte is held: the device must
        be expected to upload now, and its declared size within what this job's updates
        take (:meth:`Coordinator.upload_bound`); every buffer counts in the spool's budgets."""
        device = await self.gate.device(context, chunk.job_id)
        try:
            bound = self.coordinator.upload_bound(chunk.job_id, device)
        except UploadRefused as exc:
            await self.gate.refuse(context, chunk.job_id, device, exc.code,
                               status_for(exc.code), str(exc))
            raise  # unreachable: refuse aborts
        if not 0 < chunk.total_size <= bound:
            await self.gate.refuse(context, chunk.job_id, device, "too_large",
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
