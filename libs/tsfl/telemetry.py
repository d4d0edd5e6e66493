"""Tracing glue: W3C trace context in bus headers (OpenTelemetry)."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import propagate


def inject_trace_headers() -> list[tuple[str, bytes]]:
    """The current span's context as Kafka headers (empty when nothing is traced)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


def extract_trace_context(headers: Sequence[tuple[str, bytes]]):
    """The remote parent context carried by a record's headers."""
    return propagate.extract({k: v.decode(errors="replace") for k, v in headers})
