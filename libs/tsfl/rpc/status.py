"""The one table from errors to gRPC status codes: refusal codes (wire, coordinator) by
name, and every other :class:`~tsfl.errors.TsflError` by its kind."""

from __future__ import annotations

import grpc

from tsfl.errors import ErrorKind, TsflError

KIND_STATUS: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.ABORTED: grpc.StatusCode.ABORTED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

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
    "he_unsigned": grpc.StatusCode.UNAUTHENTICATED,  # an encrypted section without signature
    "he_identity": grpc.StatusCode.PERMISSION_DENIED,  # signer untrusted or another device
    "he_signature": grpc.StatusCode.INVALID_ARGUMENT,  # section tampered with or forged
    "he_commit": grpc.StatusCode.FAILED_PRECONDITION,  # threshold HE: not the committed one
    "secagg": grpc.StatusCode.FAILED_PRECONDITION,  # an update for a SecAgg+ job
    "wrong_stage": grpc.StatusCode.FAILED_PRECONDITION,  # SecAgg+: that stage is over
}


def status_for(code: str) -> grpc.StatusCode:
    return UPLOAD_STATUS.get(code, grpc.StatusCode.INVALID_ARGUMENT)


def grpc_status(exc: TsflError) -> grpc.StatusCode:
    """The status a refused call ends with: the refusal code's, else the error kind's."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code in UPLOAD_STATUS:
        return UPLOAD_STATUS[code]
    return KIND_STATUS[exc.kind]
