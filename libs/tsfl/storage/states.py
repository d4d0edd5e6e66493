"""The round lifecycle and the store's error type."""

from __future__ import annotations

import enum

from tsfl.errors import ErrorKind, TsflError


class StoreError(TsflError, RuntimeError):
    """A write that would break an invariant (illegal transition, unknown job, ...)."""

    kind = ErrorKind.INTERNAL


class RoundState(enum.StrEnum):
    OPEN = "OPEN"
    COLLECTING = "COLLECTING"
    CLOSING = "CLOSING"
    AGGREGATED = "AGGREGATED"
    PUBLISHED = "PUBLISHED"
    FAILED = "FAILED"


NEXT_STATES: dict[RoundState, set[RoundState]] = {
    RoundState.OPEN: {RoundState.COLLECTING, RoundState.FAILED},
    RoundState.COLLECTING: {RoundState.CLOSING, RoundState.FAILED},
    RoundState.CLOSING: {RoundState.AGGREGATED, RoundState.FAILED},
    RoundState.AGGREGATED: {RoundState.PUBLISHED, RoundState.FAILED},
    RoundState.PUBLISHED: set(),
    RoundState.FAILED: set(),
}
