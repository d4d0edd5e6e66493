"""Who is calling the device API: the authenticated device (or vertical party) of a call,
refusals rate-limited per peer host and audited in aggregate, and the lock on a live
device id — one gate the DeviceService and the party relay share."""

from __future__ import annotations

import time
from typing import Any

import grpc

from tsfl.pipeline.coordinator import SYSTEM_AUDIT, Coordinator
from tsfl.rpc.common import DEVICE_HEADER
from tsfl.rpc.guard import PeerLimiter, RefusalLog, valid_device_id

#: a device authenticated this recently is live: its id cannot be re-enrolled by others
LIVE_S = 60.0


def peer_host(peer: str) -> str:
    """``ipv4:1.2.3.4:5678`` → ``ipv4:1.2.3.4``: a reconnect gets no fresh bucket."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class DeviceGate:
    """Authenticates device calls by session token and refuses the rest: the same answer
    whether or not a device is enrolled, rate-limited per peer, audited on the job's
    chain (or the system chain) in aggregate."""

    def __init__(self, coordinator: Coordinator):
        self.coordinator = coordinator
        self.limiter = PeerLimiter()
        self.refusals = RefusalLog(self._audit_refusal)
        self._live: dict[tuple[str, str], float] = {}  # (job, device) -> last authenticated

    async def _audit_refusal(self, chain: str, kind: str, payload: dict[str, Any]) -> None:
        await self.coordinator.store.append_audit(chain, kind, payload)

    def chain(self, job_id: str) -> str:
        """The audit chain of a refusal: the job's when it runs, else the system's."""
        return job_id if job_id in self.coordinator.jobs else SYSTEM_AUDIT

    async def unauthenticated(self, context: grpc.aio.ServicerContext, job_id: str,
                              code: str, message: str, detail: dict[str, Any]) -> None:
        """Refuse a call without valid credentials: rate-limited per peer, audited in
        aggregate, and the same answer whether or not the device is enrolled."""
        peer = peer_host(context.peer() or "?")
        if not self.limiter.allowed(peer):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "too many refused calls from this peer; slow down")
        self.limiter.charge(peer)
        await self.refusals.refused(self.chain(job_id), "call.refused", code,
                                    {"peer": peer, **detail})
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse(self, context: grpc.aio.ServicerContext, job_id: str, device: str,
                     code: str, status: grpc.StatusCode, message: str) -> None:
        """Audit a refused upload in aggregate (on the job's chain, or the system chain:
        one row per code and window, with its count), then abort it."""
        await self.refusals.refused(self.chain(job_id), "upload.refused", code,
                                    {"client_id": device, "message": message})
        await context.abort(status, f"{code}: {message}")

    async def device(self, context: grpc.aio.ServicerContext, job_id: str) -> str:
        """The authenticated device id of a call, or an UNAUTHENTICATED abort."""
        md = dict(context.invocation_metadata() or ())
        device = str(md.get(DEVICE_HEADER, ""))
        auth = str(md.get("authorization", ""))
        if not valid_device_id(device) or not auth.startswith("Bearer "):
            await self.unauthenticated(context, job_id, "unauthenticated",
                                       "missing or malformed device id or session token", {})
        if not await self.coordinator.authenticate(job_id, device, auth.removeprefix("Bearer ")):
            # one answer for "not enrolled" and "wrong token": enrolment is not revealed
            await self.unauthenticated(context, job_id, "bad_credentials",
                                       "invalid device credentials", {"device_id": device})
        self._live[(job_id, device)] = time.monotonic()
        if len(self._live) > 1_000_000:
            self._live.clear()
        return device

    async def check_reenrolment(self, context: grpc.aio.ServicerContext, job_id: str,
                                device: str, message: str) -> None:
        """A live device's id is taken: only its own session (the call's authorization
        metadata) may enrol it again; anyone else is refused with ``message``."""
        if time.monotonic() - self._live.get((job_id, device), -1e9) >= LIVE_S:
            return
        md = dict(context.invocation_metadata() or ())
        current = str(md.get("authorization", "")).removeprefix("Bearer ")
        if not await self.coordinator.authenticate(job_id, device, current):
            await self.unauthenticated(context, job_id, "device_id_taken", message,
                                       {"device_id": device})
