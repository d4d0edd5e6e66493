"""The coordinator's party relay over gRPC (service ``tsfl.vertical.PartyRelay``).

Beside DeviceService and AdminService on the coordinator's server; unary methods on
msgpack maps (no generated stubs), every request bounded before it is decoded:

- ``Register {job, party, enrollment_token}`` → ``{session_token, spec, num_classes}``:
  a party of a running vertical job enrols with the job's enrolment token, as a device
  does (the same rate-limited, audited refusals; a live party's name is re-enrolled only
  with its current session); ``spec`` is the job spec as admitted (JSON), for the party
  to compare with the terms it agreed to.
- ``Send {job, dst, kind, payload}``, ``Receive {job, src, kind, timeout}`` → payload,
  ``Report {job, kind, body}``: authenticated as device calls are (``x-tsfl-device``:
  the party, ``authorization: Bearer <session>``), then checked by the relay
  (:mod:`tsfl.rpc.party_relay`) or the job's record
  (:mod:`tsfl.runtime.vertical_jobs`, passed in: the runtime sits above rpc).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import msgpack

from tsfl.rpc.device_gate import DeviceGate
from tsfl.rpc.party_relay import MAX_PAYLOAD, PARTY_NAME, RelayError, ReportRefused
from tsfl.rpc.status import KIND_STATUS

if TYPE_CHECKING:
    from tsfl.runtime.vertical_jobs import VerticalJobs

SERVICE = "tsfl.vertical.PartyRelay"
#: a Receive's "nothing yet" (the client polls again), the other relay refusals by code
RELAY_STATUS = {"not_party": grpc.StatusCode.PERMISSION_DENIED,
                "full": grpc.StatusCode.RESOURCE_EXHAUSTED,
                "closed": grpc.StatusCode.FAILED_PRECONDITION,
                "empty": grpc.StatusCode.DEADLINE_EXCEEDED}
_TOKEN_MAX = 256

Handler = Callable[[dict[str, Any], grpc.aio.ServicerContext], Awaitable[bytes]]


def _decode(request: bytes) -> dict[str, Any]:
    req = msgpack.unpackb(request, raw=False, max_bin_len=MAX_PAYLOAD, max_str_len=4096,
                          max_map_len=32, max_array_len=64, strict_map_key=True)
    if not isinstance(req, dict):
        raise ValueError("a request is a map")
    if not isinstance(req.get("job"), str) or not 0 < len(req["job"]) <= 256:
        raise ValueError("job: a job id")
    return req


class PartyRelayServicer:
    """Register, Send, Receive and Report for the parties of vertical jobs."""

    def __init__(self, gate: DeviceGate, vertical: VerticalJobs):
        self.gate = gate  # the device API's authentication, limiter and refusal audits
        self.vertical = vertical
        self.relay = vertical.relay

    async def _party(self, context: grpc.aio.ServicerContext, job_id: str) -> str:
        """The authenticated party of a call (the device API's check), or an abort."""
        party = await self.gate.device(context, job_id)
        if party not in self.relay.parties(job_id):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "not a party of a running vertical job")
        return party

    async def register(self, req: dict[str, Any], context: grpc.aio.ServicerContext
                       ) -> bytes:
        job_id, party, token = req["job"], req.get("party"), req.get("enrollment_token")
        if not isinstance(party, str) or not PARTY_NAME.match(party):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "party: 1-64 characters of letters, digits and . _ -")
        if not isinstance(token, str) or len(token) > _TOKEN_MAX:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"enrollment_token: text of at most {_TOKEN_MAX} characters")
        assert isinstance(party, str) and isinstance(token, str)  # abort raised otherwise
        run = self.vertical.runs.get(job_id)
        if run is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no running vertical job {job_id!r}")
        assert run is not None
        if not await self.vertical.manager.enrollment_ok(job_id, token):
            await self.gate.unauthenticated(context, job_id, "bad_enrollment_token",
                                            "bad enrollment token", {"device_id": party})
        if party not in run.parties:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{party!r} is not a party of this job")
        await self.gate.check_reenrolment(
            context, job_id, party,
            "this party is enrolled and active: re-enrol with its session token")
        session = secrets.token_urlsafe(32)
        await self.vertical.enrol(job_id, party, session)
        return msgpack.packb({"session_token": session,
                              "spec": run.spec.model_dump_json(),
                              "num_classes": run.num_classes})

    async def send(self, req: dict[str, Any], context: grpc.aio.ServicerContext) -> bytes:
        party = await self._party(context, req["job"])
        await self.relay.send(req["job"], party, req.get("dst"), req.get("kind"),
                              req.get("payload"))
        return b""

    async def receive(self, req: dict[str, Any], context: grpc.aio.ServicerContext
                      ) -> bytes:
        party = await self._party(context, req["job"])
        return await self.relay.receive(req["job"], party, req.get("src"), req.get("kind"),
                                        req.get("timeout", 10.0))

    async def report(self, req: dict[str, Any], context: grpc.aio.ServicerContext) -> bytes:
        party = await self._party(context, req["job"])
        body = req.get("body")
        if not isinstance(body, dict) or not isinstance(req.get("kind"), str):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "a report is {kind: text, body: map}")
        assert isinstance(body, dict)  # abort raised otherwise
        await self.vertical.report(req["job"], party, req["kind"], body)
        return b""


def _unary(fn: Handler) -> grpc.RpcMethodHandler:
    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            req = _decode(request)
        except (ValueError, TypeError, msgpack.exceptions.ExtraData,
                msgpack.exceptions.FormatError, msgpack.exceptions.StackError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed: {exc}")
        try:
            return await fn(req, context)
        except RelayError as exc:
            await context.abort(RELAY_STATUS.get(exc.code, grpc.StatusCode.INVALID_ARGUMENT),
                                f"{exc.code}: {exc}")
        except ReportRefused as exc:
            await context.abort(KIND_STATUS[exc.kind], f"report refused: {exc}")
        raise AssertionError("unreachable: abort raises")

    return grpc.unary_unary_rpc_method_handler(call)


def add_party_relay(server: grpc.aio.Server, gate: DeviceGate,
                    vertical: VerticalJobs) -> PartyRelayServicer:
    """Serve the party relay on ``server`` (the coordinator's), authenticating parties
    at the device API's ``gate``."""
    servicer = PartyRelayServicer(gate, vertical)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "Register": _unary(servicer.register), "Send": _unary(servicer.send),
        "Receive": _unary(servicer.receive), "Report": _unary(servicer.report)})])
    return servicer
