"""The SDK's gRPC side: a :class:`~tsfl.sdk.runner.Transport` to the coordinator, and
``start_client`` — enrol, then poll for tasks and run them, retrying transient failures
(:data:`tsfl.rpc.retry.TRANSIENT`, e.g. ``UNAVAILABLE`` while the coordinator's broker is
unreachable) with capped exponential back-off and jitter (:class:`tsfl.rpc.retry.Backoff`)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import xxhash

from tsfl.core.layout import ParamLayout
from tsfl.errors import ErrorKind, TsflError
from tsfl.he import HeError, SecretKeySet
from tsfl.rpc.common import CHUNK_BYTES, DEVICE_HEADER, MAX_UNARY_BYTES, grpc_options
from tsfl.rpc.retry import TRANSIENT, Backoff
from tsfl.sdk.client import NumPyClient
from tsfl.sdk.he import HeDevice, SiloKeys
from tsfl.sdk.he_silo import SiloAborted
from tsfl.sdk.privacy_guard import DevicePrivacy
from tsfl.sdk.runner import ClientRunner, RoundOutcome, RoundTask, UploadReceipt
from tsfl.sdk.secagg import SecAggDevice
from tsfl.secagg.protocol import SecAggAbort
from tsfl.secagg.ring import RingSpec
from tsfl.v1 import device_pb2, device_pb2_grpc
from tsfl.wire import he as he_wire
from tsfl.wire.envelope import WireError
from tsfl.wire.messages import LATEST_MODEL as LATEST
from tsfl.wire.messages import decode_model
from tsfl.wire.secagg import decode_reply, encode_request

log = logging.getLogger("tsfl.sdk")

RETRYABLE = TRANSIENT  # the status codes a device retries (kept for importers)
#: what run_client's loop also retries: a call the transport CANCELLED (a connection reset
#: under load; one such Register once aborted a whole fleet). Its calls are idempotent:
#: a repeated Register re-enrols, an update counts once per (job, round, client).
LOOP_RETRYABLE = RETRYABLE | {grpc.StatusCode.CANCELLED}


@dataclass
class TLSConfig:
    """mTLS material (PEM bytes); ``ca`` alone authenticates the server only."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)


class LayoutMismatch(TsflError, ValueError):
    """This device's model is not the job's: nothing was trained or sent."""


def check_layout(job_id: str, job_layout: ParamLayout | None, mine: ParamLayout) -> None:
    """Refuse to take part with a model whose tensors differ from the job's, naming each
    difference (before any training, not at the first model download)."""
    if job_layout is None or job_layout == mine:
        return
    diffs = job_layout.differences(mine, here="the job", there="this device's model")
    raise LayoutMismatch(f"this device's model does not match job {job_id!r}: "
                         + "; ".join(diffs[:10]) + (f" (+{len(diffs) - 10} more)"
                                                     if len(diffs) > 10 else ""))


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
                if exc.code() in RETRYABLE and attempt + 1 < self.attempts:
                    await asyncio.sleep(self.backoff.delay(attempt))
                    continue
                if exc.code() in RETRYABLE or exc.code() == grpc.StatusCode.UNAUTHENTICATED:
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
                if exc.code() not in RETRYABLE:
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
    if exc.code() in RETRYABLE:
        return True
    return exc.code() == grpc.StatusCode.DATA_LOSS and "ended after" in (exc.details() or "")


class JobFinished(TsflError):
    """The job is over: the device can stop."""

    kind = ErrorKind.PRECONDITION


async def _serve_he(runner: ClientRunner, job_id: str) -> None:
    """A threshold-HE silo's idle duties; a failed opening or a ceremony that failed
    elsewhere is logged (the silo tries again), a :class:`SiloAborted` ends its part."""
    try:
        await runner.serve_he(job_id)
    except SiloAborted:
        raise
    except HeError as exc:
        log.info("%s: %s", runner.client_id, exc)


async def fetch_job_layout(address: str, job_id: str, device_id: str, token: str,
                           tls: TLSConfig | None = None) -> ParamLayout:
    """The job's model layout, as the coordinator sends it at registration (a device can
    build a built-in model kind from it: :func:`tsfl.sdk.job_model.job_model`)."""
    probe = GrpcTransport(address, job_id, device_id, tls=tls)
    try:
        await probe.register(token)
        layout = probe.job_layout
    finally:
        await probe.close()
    if layout is None:
        raise ConnectionError(f"the coordinator did not send job {job_id}'s layout")
    return layout


@dataclass
class ClientResult:
    """What a device got out of a job: the rounds it contributed to (accepted updates),
    every task's outcome, and the job's final model when the job finished (None when it
    is not served: an HE job, or the device stopped before the end)."""

    contributed: int
    outcomes: list[RoundOutcome] = field(default_factory=list)
    final_version: int | None = None
    final_model: np.ndarray | None = None  # flat, in the device's layout

    def final_parameters(self, layout: ParamLayout) -> list[np.ndarray] | None:
        """The final model as per-tensor arrays (a Flower client's ``parameters``)."""
        return None if self.final_model is None else layout.unflatten_list(self.final_model)


async def start_client(address: str, client: NumPyClient, **options: Any) -> int:
    """Take part in a job until it finishes; returns the number of rounds contributed.
    The options are :func:`run_client`'s (which also returns the final model)."""
    return (await run_client(address, client, **options)).contributed


async def run_client(address: str, client: NumPyClient, *, job_id: str, device_id: str,
                       token: str, layout: ParamLayout, tls: TLSConfig | None = None,
                       poll_s: float = 0.2, max_backoff_s: float = 10.0,
                       stop: asyncio.Event | None = None, offload: bool = True,
                       he_keys: Sequence[SecretKeySet | SiloKeys] = (),
                       privacy: DevicePrivacy | None = None,
                       backoff: Backoff | None = None, he: HeDevice | None = None,
                       secagg: SecAggDevice | None = None,
                       channel: grpc.aio.Channel | None = None) -> ClientResult:
    """Take part in a job until it finishes; returns the rounds contributed, each task's
    outcome and, once the job finished, its final model (:class:`ClientResult`).

    ``he_keys``: the secret key sets of HE jobs (``tsfl keys init``) this device may join.
    ``secagg``: the device's SecAgg+ identity, the authorities it trusts and its floor
    (:class:`~tsfl.sdk.secagg.SecAggDevice`); without it the device refuses SecAgg+
    rounds (it cannot sign its keys nor check its neighbours').
    ``he``: the device's HE side whole (:class:`~tsfl.sdk.he.HeDevice`) instead — a
    threshold-HE silo's identity, trusted authorities and share directory: while no
    task is due it takes part in the job's key ceremony and opens each new model
    (:mod:`tsfl.sdk.he_silo`). A silo that finds the ceremony's transcript wrong leaves
    the job (logged with the reason; the coordinator hears it too).
    ``privacy``: the device owner's floor and ledger (default: the client's own, e.g. a
    ``TorchClient``'s, else a fresh one); a task below it is declined to the coordinator.
    ``channel``: a channel (:func:`open_channel`) this device shares with others of its
    process, left open; default: its own.

    Transient failures (coordinator restarts, network drops, ``UNAVAILABLE`` while the
    coordinator's broker is unreachable) are retried, never given up on: retry ``n``
    waits ``backoff.delay(n)`` (default: 0.1 s doubling up to ``max_backoff_s``, with
    jitter), and a success starts the count again. An upload interrupted half-way
    resumes where the coordinator's spool stopped (a coordinator that restarted has none:
    it starts again at 0), and the coordinator counts an update once per (job, round,
    client) whatever happens.
    """
    transport = GrpcTransport(address, job_id, device_id, tls=tls, channel=channel)
    runner = ClientRunner(device_id, client, transport, layout, offload=offload,
                          he=he or HeDevice(he_keys), privacy=privacy, secagg=secagg)
    backoff = backoff or Backoff(base_s=min(0.1, max_backoff_s), cap_s=max_backoff_s)
    failures, contributed, finished = 0, 0, False
    outcomes: list[RoundOutcome] = []
    sat_out: tuple[str, int] | None = None  # a SecAgg+ round this device dropped out of
    try:
        while stop is None or not stop.is_set():
            try:
                if transport.session is None:
                    await transport.register(token)
                    check_layout(job_id, transport.job_layout, layout)
                task = await transport.get_task(device_id)
                failures = 0  # the coordinator answers: back-off starts again
                if task is None:
                    await _serve_he(runner, job_id)
                    await asyncio.sleep(poll_s)
                    continue
                if (task.job_id, task.round) == sat_out:
                    await asyncio.sleep(poll_s)  # this round went on without us
                    continue
                try:
                    outcome = await runner.run_task(task)
                except (SecAggAbort, HeError) as exc:
                    if isinstance(exc, SiloAborted):
                        raise
                    log.info("%s: round %d: %s", device_id, task.round, exc)
                    sat_out = (task.job_id, task.round)
                    continue
                outcomes.append(outcome)
                if outcome.receipt.accepted:
                    contributed += 1
                elif outcome.receipt.code == "refused":
                    log.info("%s: declined round %d: %s", device_id, task.round,
                             outcome.receipt.message)
                elif outcome.receipt.code not in ("duplicate", "round_closed", "wrong_round",
                                                  "stale_model"):
                    log.warning("%s: update refused: %s %s", device_id, outcome.receipt.code,
                                outcome.receipt.message)
            except JobFinished:
                finished = True
                break
            except SiloAborted as exc:
                log.error("%s: %s", device_id, exc)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    transport.session = None  # e.g. a coordinator that forgot us: enrol again
                elif exc.code() not in LOOP_RETRYABLE:
                    raise
                wait = backoff.delay(failures)
                if failures == 0 or wait >= backoff.cap_s / 2:  # not one line per retry
                    log.info("%s: %s (%s); retrying in %.1f s", device_id, exc.code().name,
                             exc.details(), wait)
                failures += 1
                await asyncio.sleep(wait)
            except ConnectionError as exc:
                log.info("%s: %s; retrying", device_id, exc)
                await asyncio.sleep(backoff.delay(failures))
                failures += 1
        result = ClientResult(contributed, outcomes)
        if finished:
            await _fetch_final(transport, job_id, layout, result)
    finally:
        await transport.close()
    return result


async def _fetch_final(transport: GrpcTransport, job_id: str, layout: ParamLayout,
                       result: ClientResult) -> None:
    """The finished job's final model into ``result`` (left None where it is not
    served: an HE job's model exists on the server only encrypted)."""
    try:
        frame = await transport.download_model(job_id, LATEST)
        _, version, vector, _ = decode_model(memoryview(frame), layout)
    except (grpc.aio.AioRpcError, ConnectionError, WireError) as exc:
        details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        log.info("%s: the final model is not available: %s", job_id, details)
        return
    result.final_version, result.final_model = version, np.array(vector, copy=True)
