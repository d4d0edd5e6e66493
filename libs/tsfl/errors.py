"""One error family: every error TrustStram FL raises on purpose is a :class:`TsflError`.

Each domain keeps its own class (``WireError``, ``HeError``, ``ConfigError``…) and its
stable machine-readable ``code`` where it has one; :attr:`TsflError.kind` says what kind
of failure it is for a caller, and :data:`tsfl.rpc.status.KIND_STATUS` is the one table
that turns kinds into gRPC status codes. ``except TsflError`` catches every deliberate
refusal and no programming error.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class ErrorKind(StrEnum):
    INVALID = "invalid"  # the input is wrong: fix it and retry
    UNAUTHENTICATED = "unauthenticated"  # no or bad credentials
    DENIED = "denied"  # the credentials do not allow it
    NOT_FOUND = "not_found"
    PRECONDITION = "precondition"  # not now, in this state (round closed, job ended)
    EXHAUSTED = "exhausted"  # a limit or quota
    UNAVAILABLE = "unavailable"  # a dependency is down: retry later
    ABORTED = "aborted"  # a protocol gave up safely (SecAgg+, a key ceremony)
    INTERNAL = "internal"  # a broken invariant or store


class TsflError(Exception):
    """The base of every deliberate error; subclasses set :attr:`kind`."""

    kind: ClassVar[ErrorKind] = ErrorKind.INVALID
