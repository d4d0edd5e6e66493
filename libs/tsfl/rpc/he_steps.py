"""The gRPC side of threshold-HE steps (``HeSetup``, ``HeOpen``): requests read within
their job's bounds (:mod:`tsfl.wire.he`), refusals mapped to precise statuses."""

from __future__ import annotations

from typing import Any

import grpc

from tsfl.he.errors import HeError
from tsfl.pipeline.coordinator import Coordinator
from tsfl.v1 import device_pb2
from tsfl.wire import he as he_wire

#: HeError codes of the threshold-HE steps → gRPC status codes
HE_STATUS: dict[str, grpc.StatusCode] = {
    "unknown_job": grpc.StatusCode.NOT_FOUND,
    "not_threshold": grpc.StatusCode.FAILED_PRECONDITION,  # no threshold keying
    "wrong_step": grpc.StatusCode.FAILED_PRECONDITION,  # no ceremony, or out of order
    "stale_model": grpc.StatusCode.FAILED_PRECONDITION,  # not the current model
    "opening": grpc.StatusCode.FAILED_PRECONDITION,  # e.g. not a decryptor
    "key": grpc.StatusCode.FAILED_PRECONDITION,
    "not_participant": grpc.StatusCode.PERMISSION_DENIED,
    "identity": grpc.StatusCode.PERMISSION_DENIED,  # certificate or signature refused
    "malformed": grpc.StatusCode.INVALID_ARGUMENT,
    "too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "aborted": grpc.StatusCode.ABORTED,  # the ceremony or opening failed (reason given)
}


def status_for(code: str) -> grpc.StatusCode:
    return HE_STATUS.get(code, grpc.StatusCode.INVALID_ARGUMENT)


def read_request(coordinator: Coordinator, request: device_pb2.HeStepRequest,
                 stages: tuple[str, ...]) -> dict[str, Any]:
    """The request's payload, parsed within the most bytes its stage takes for its job;
    :class:`HeError` (``unknown_job``, ``not_threshold``, ``malformed``, ``too_large``)."""
    job = coordinator.jobs.get(request.job_id)
    if job is None:
        raise HeError("unknown_job", f"no running job {request.job_id!r}")
    if job.he_shape is None:
        raise HeError("not_threshold", f"{request.job_id!r} is not a threshold-HE job")
    if request.stage not in stages:
        raise HeError("malformed", f"unknown stage {request.stage[:32]!r}; one of "
                                   f"{', '.join(stages)}")
    params, size = job.he_shape
    return he_wire.unpack(request.payload, he_wire.request_bound(request.stage, params, size))
