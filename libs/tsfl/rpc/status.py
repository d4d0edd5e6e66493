"""Mapping of refusal codes (wire and coordinator) to gRPC status codes."""

from __future__ import annotations

import grpc

UPLOAD_STATUS: dict[str, grpc.StatusCode] = {
    "malformed": grpc.StatusCode.INVALID_ARGUMENT,
    "version": grpc.StatusCode.INVALID_ARGUMENT,
    "kind": grpc.StatusCode.INVALID_ARGUMENT,
    "shape": grpc.StatusCode.INVALID_ARGUMENT,
    "layout": grpc.StatusCode.INVALID_ARGUMENT,
    "codec": grpc.StatusCode.INVALID_ARGUMENT,
    "examples": grpc.StatusCode.INVALID_ARGUMENT,
    "nonfinite": grpc.StatusCode.INVALID_ARGUMENT,
    "norm_bound": grpc.StatusCode.INVALID_ARGUMENT,  # an update far larger than the round's
    "too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "checksum": grpc.StatusCode.DATA_LOSS,
    "unknown_job": grpc.StatusCode.NOT_FOUND,
    "identity": grpc.StatusCode.PERMISSION_DENIED,
    "not_selected": grpc.StatusCode.FAILED_PRECONDITION,
    "wrong_round": grpc.StatusCode.FAILED_PRECONDITION,
    "stale_model": grpc.StatusCode.FAILED_PRECONDITION,
    "round_closed": grpc.StatusCode.FAILED_PRECONDITION,
    "duplicate": grpc.StatusCode.ALREADY_EXISTS,
    "he": grpc.StatusCode.INVALID_ARGUMENT,  # clear update for an HE job, or the reverse
    "sealed": grpc.StatusCode.INVALID_ARGUMENT,  # a malformed encrypted section
    "he_key": grpc.StatusCode.FAILED_PRECONDITION,  # encrypted under another job's key
    "secagg": grpc.StatusCode.FAILED_PRECONDITION,  # an update for a SecAgg+ job
    "wrong_stage": grpc.StatusCode.FAILED_PRECONDITION,  # SecAgg+: that stage is over
}


def status_for(code: str) -> grpc.StatusCode:
    return UPLOAD_STATUS.get(code, grpc.StatusCode.INVALID_ARGUMENT)
