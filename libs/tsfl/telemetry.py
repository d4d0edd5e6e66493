"""Tracing and logging glue: W3C trace context in bus headers (OpenTelemetry), and the
job / round / device a task is working on, for its log lines (:mod:`tsfl.runtime.logs`)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import propagate


def inject_trace_headers() -> list[tuple[str, bytes]]:
    """The current span's context as Kafka headers (empty when nothing is traced)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


def extract_trace_context(headers: Sequence[tuple[str, bytes]]):
    """The remote parent context carried by a record's headers."""
    return propagate.extract({k: v.decode(errors="replace") for k, v in headers})


#: the job / round / device the current task is working on (set per handled record)
_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "tsfl_log_context", default=None)
FIELDS = ("job", "round", "client")


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Tag every log line emitted inside the block (in this task) with ``fields``
    (``job``, ``round``, ``client``); ``None`` values are left out."""
    current = dict(_CONTEXT.get() or {})
    current.update({k: v for k, v in fields.items() if v is not None})
    token = _CONTEXT.set(current)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def context_from_key(key: bytes | None) -> dict[str, Any]:
    """The job / round / client a bus record's key names (``job``, ``job:round`` or
    ``job:round:client``, as docs/topics.md gives them)."""
    if not key:
        return {}
    parts = key.decode(errors="replace").split(":")
    out: dict[str, Any] = {"job": parts[0][:128]}
    if len(parts) > 1 and parts[1].isdigit():
        out["round"] = int(parts[1])
    if len(parts) > 2:
        out["client"] = ":".join(parts[2:])[:128]
    return out


def current_log_context() -> dict[str, Any]:
    return dict(_CONTEXT.get() or {})
