"""The admin API (``AdminService``): submit, inspect, watch and cancel jobs — every call
authenticated by an admin token and authorised per job (:mod:`tsfl.rpc.admin_auth`)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import yaml

from tsfl.bus.base import BusUnavailable
from tsfl.config import ConfigError
from tsfl.errors import TsflError
from tsfl.pipeline.coordinator import Coordinator
from tsfl.rpc.admin_auth import AdminAuth, AdminAuthError, Principal, bearer
from tsfl.rpc.status import grpc_status
from tsfl.storage.rows import JobRow, RoundRow
from tsfl.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:  # passed in by the runtime, which sits above rpc
    from tsfl.runtime.jobs import JobManager

JOB_STATUSES = ("RUNNING", "COMPLETED", "FAILED", "CANCELLED")
MAX_LISTED_JOBS = 1000


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """The admin API: every call authenticated by an admin token and authorised per job
    (:mod:`tsfl.rpc.admin_auth`)."""

    def __init__(self, coordinator: Coordinator, jobs: JobManager, watch_poll_s: float = 0.25):
        self.coordinator = coordinator
        self.jobs = jobs
        self.store = coordinator.store
        self.watch_poll_s = watch_poll_s
        self.auth = AdminAuth(coordinator.store)

    async def _caller(self, context: grpc.aio.ServicerContext) -> Principal:
        try:
            return await self.auth.authenticate(bearer(context.invocation_metadata()))
        except AdminAuthError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise  # unreachable: abort raises

    async def _job(self, context: grpc.aio.ServicerContext, job_id: str,
                   cancel: bool = False) -> tuple[Principal, JobRow]:
        """The caller and the job's row, if the caller may read (or cancel) it."""
        caller = await self._caller(context)
        row = await self.store.get_job(job_id)
        if row is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no job {job_id!r}")
        assert row is not None
        try:
            (self.auth.may_cancel if cancel else self.auth.may_read)(caller, row)
        except AdminAuthError as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return caller, row

    async def _info(self, job_id: str, context: grpc.aio.ServicerContext) -> admin_pb2.JobInfo:
        row = await self.store.get_job(job_id)
        if row is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no job {job_id!r}")
        assert row is not None
        rounds = await self.store.list_rounds(job_id)
        done = sum(1 for r in rounds if r["state"] in ("PUBLISHED", "FAILED"))
        ckpt_version = max((r["model_version"] + (r["state"] == "PUBLISHED")
                            for r in rounds), default=0)
        reason = row["reason"] or ""
        if row["status"] == "RUNNING" and not reason:  # why it does not progress, if known
            reason = self.jobs.broker_outage() or ""
        info = admin_pb2.JobInfo(
            job_id=job_id, name=row["name"], status=row["status"], reason=reason,
            rounds_total=int(row["spec"].get("rounds", 0)), rounds_done=done,
            model_version=ckpt_version, spec_yaml=yaml.safe_dump(row["spec"], sort_keys=False),
            devices=len(await self.store.list_device_ids(job_id)),
            layout_json=json.dumps(row["layout"]))
        evaluated = [r["metrics"] for r in rounds
                     if (r["metrics"] or {}).get("test_accuracy") is not None]
        if evaluated and evaluated[-1] is not None:
            info.test_accuracy = float(evaluated[-1]["test_accuracy"])
            info.test_loss = float(evaluated[-1]["test_loss"])
        return info

    async def SubmitJob(self, request: admin_pb2.SubmitJobRequest,
                        context: grpc.aio.ServicerContext) -> admin_pb2.JobInfo:
        caller = await self._caller(context)
        try:
            self.auth.may_submit(caller)
        except AdminAuthError as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        try:
            sub = await self.jobs.submit(request.spec_yaml, request.enrollment_token,
                                         owner=caller.name)
        except ConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "\n".join(exc.problems))
        except BusUnavailable as exc:  # nothing RUNNING was left behind: retry later
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except (ValueError, OSError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except TsflError as exc:  # e.g. the admission quota (RESOURCE_EXHAUSTED)
            await context.abort(grpc_status(exc), str(exc))
        info = await self._info(sub.job_id, context)
        info.enrollment_token = sub.enrollment_token
        return info

    async def ListJobs(self, request: admin_pb2.ListJobsRequest,
                       context: grpc.aio.ServicerContext) -> admin_pb2.JobList:
        caller = await self._caller(context)
        if request.status and request.status not in JOB_STATUSES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"status is one of {', '.join(JOB_STATUSES)}")
        rows = await self.store.list_jobs(request.status or None)
        readable = []
        for row in reversed(rows):  # newest first
            try:
                self.auth.may_read(caller, row)
            except AdminAuthError:
                continue
            readable.append(row)
            if len(readable) >= MAX_LISTED_JOBS:
                break
        return admin_pb2.JobList(jobs=[await self._info(r["id"], context) for r in readable])

    async def GetJob(self, request: admin_pb2.JobRef,
                     context: grpc.aio.ServicerContext) -> admin_pb2.JobInfo:
        await self._job(context, request.job_id)
        return await self._info(request.job_id, context)

    async def CancelJob(self, request: admin_pb2.JobRef,
                        context: grpc.aio.ServicerContext) -> admin_pb2.JobInfo:
        caller, row = await self._job(context, request.job_id, cancel=True)
        if row["status"] != "RUNNING":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"job {request.job_id} is {row['status']}")
        await self.store.append_audit(request.job_id, "job.cancel_requested", {
            "by": caller.name, "role": caller.role}, actor=caller.label)
        if not await self.jobs.cancel(request.job_id, by=caller.label):
            now = await self.store.get_job(request.job_id)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"job {request.job_id} is {now['status'] if now else 'gone'}")
        return await self._info(request.job_id, context)

    async def WatchJob(self, request: admin_pb2.JobRef,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[admin_pb2.RoundInfo]:
        await self._job(context, request.job_id)
        seen: dict[int, tuple[str, bool]] = {}
        while True:
            row = await self.store.get_job(request.job_id)
            if row is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r}")
            assert row is not None
            for r in await self.store.list_rounds(request.job_id):
                # a round's state changes, and its metrics arrive after its release
                key = (r["state"], bool(r["metrics"]))
                if seen.get(r["number"]) != key:
                    seen[r["number"]] = key
                    yield _round_info(r, row["status"])
            if row["status"] != "RUNNING":
                yield admin_pb2.RoundInfo(round=0, state="", job_status=row["status"],
                                          reason=row["reason"] or "")
                return
            await asyncio.sleep(self.watch_poll_s)

    async def ListRounds(self, request: admin_pb2.JobRef,
                         context: grpc.aio.ServicerContext) -> admin_pb2.RoundList:
        _, row = await self._job(context, request.job_id)
        return admin_pb2.RoundList(rounds=[_round_info(r, row["status"]) for r in
                                           await self.store.list_rounds(request.job_id)])

    async def ListParticipants(self, request: admin_pb2.ParticipantsRequest,
                               context: grpc.aio.ServicerContext) -> admin_pb2.ParticipantList:
        await self._job(context, request.job_id)
        rows = await self.store.list_participants(request.job_id, request.round or None)
        return admin_pb2.ParticipantList(participants=[admin_pb2.Participant(
            round=p["round"], client_id=p["client_id"], status=p["status"],
            reason=p["reason"] or "", num_examples=p["num_examples"] or 0,
            bytes_up=p["bytes_up"] or 0) for p in rows])

    async def QueryAudit(self, request: admin_pb2.JobRef,
                         context: grpc.aio.ServicerContext) -> admin_pb2.AuditTrail:
        await self._job(context, request.job_id)
        trail = await self.store.audit_trail(request.job_id)
        ok, detail = await self.store.verify_audit(request.job_id)
        return admin_pb2.AuditTrail(chain_valid=ok, chain_detail=detail, events=[
            admin_pb2.AuditEvent(seq=e["seq"], kind=e["kind"], actor=e["actor"],
                                 payload_json=json.dumps(e["payload"]),
                                 created_at=e["created_at"], hash=e["hash"],
                                 prev_hash=e["prev_hash"]) for e in trail])


def _round_info(r: RoundRow, job_status: str) -> admin_pb2.RoundInfo:
    info = admin_pb2.RoundInfo(round=r["number"], state=r["state"], reason=r["reason"] or "",
                               accepted=r["accepted"], rejected=r["rejected"],
                               cohort_size=r["cohort_size"], model_version=r["model_version"],
                               job_status=job_status)
    metrics = r.get("metrics") or {}
    for name in ("test_accuracy", "test_loss", "train_loss", "epsilon"):
        value = metrics.get(name)
        if isinstance(value, int | float) and math.isfinite(value):
            setattr(info, name, float(value))
    for name in ("bytes_up", "bytes_down"):
        if isinstance(metrics.get(name), int):
            setattr(info, name, metrics[name])
    return info
