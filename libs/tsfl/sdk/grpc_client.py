"""A device's loop against the coordinator: :func:`run_client` (and
:func:`start_client`) enrols, then polls for tasks and runs them over a
:class:`~tsfl.sdk.grpc_transport.GrpcTransport`, retrying transient failures
(:data:`tsfl.rpc.retry.TRANSIENT`, e.g. ``UNAVAILABLE`` while the coordinator's broker is
unreachable) with capped exponential back-off and jitter (:class:`tsfl.rpc.retry.Backoff`)
until the job finishes; :class:`ClientResult` is what it got out of the job."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from tsfl.core.layout import ParamLayout
from tsfl.errors import TsflError
from tsfl.he import HeError, SecretKeySet
from tsfl.rpc.retry import TRANSIENT, Backoff
from tsfl.sdk.client import NumPyClient
from tsfl.sdk.grpc_transport import GrpcTransport, JobFinished, TLSConfig
from tsfl.sdk.he import HeDevice, SiloKeys
from tsfl.sdk.he_silo import SiloAborted
from tsfl.sdk.privacy_guard import DevicePrivacy
from tsfl.sdk.runner import ClientRunner, RoundOutcome
from tsfl.sdk.secagg import SecAggDevice
from tsfl.secagg.round import SecAggAbort
from tsfl.wire.envelope import WireError
from tsfl.wire.messages import LATEST_MODEL as LATEST
from tsfl.wire.messages import decode_model

log = logging.getLogger("tsfl.sdk")

#: what run_client's loop also retries: a call the transport CANCELLED (a connection reset
#: under load; one such Register once aborted a whole fleet). Its calls are idempotent:
#: a repeated Register re-enrols, an update counts once per (job, round, client).
LOOP_RETRYABLE = TRANSIENT | {grpc.StatusCode.CANCELLED}


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



def next_poll_s(advice: float | None, poll_s: float, silo: bool) -> float:
    """How long a device without a task waits: the coordinator's advice (jittered ±50%,
    so a fleet's polls do not bunch up) when it asks for longer than ``poll_s``; a
    threshold-HE silo keeps ``poll_s``, since it serves the sum's opening between tasks."""
    if advice is None or advice <= poll_s or silo:
        return poll_s
    return advice * random.uniform(0.5, 1.5)


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
                    await asyncio.sleep(next_poll_s(transport.retry_after_s, poll_s,
                                                    runner.he.identity is not None))
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
