"""Structured logs: one JSON object per line (for the services), nothing unstructured.

Every line carries ``ts``, ``level``, ``service``, ``logger`` and ``msg``; the job, round
and device it concerns when known (from :func:`log_context` — the stages set it for each
record they handle — or a call's ``extra``); the trace and span ids when a span is active
(so a log line joins its trace); and the exception, as one string field. Uncaught
exceptions, asyncio's unretrieved task errors and Python warnings go through the same
formatter instead of printing raw tracebacks.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from types import TracebackType
from typing import Any

from tsfl.telemetry import FIELDS, current_log_context


def _trace_ids() -> dict[str, str]:
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - a dependency
        return {}
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(current_log_context())
        for name in FIELDS:  # a call's extra={...} wins over the context
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        entry.update(_trace_ids())
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _log_uncaught(kind: type[BaseException], value: BaseException,
                  tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("tsfl").critical("uncaught exception", exc_info=(kind, value, tb))


def asyncio_exception_handler(loop: Any, context: dict[str, Any]) -> None:
    """asyncio's errors nobody awaited (a failed task, a callback that raised), as a log
    line instead of a raw traceback on stderr."""
    exc = context.get("exception")
    logging.getLogger("tsfl.asyncio").error(
        context.get("message", "asyncio error"),
        exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None)


def configure(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
