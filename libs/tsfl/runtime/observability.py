"""Where a service's telemetry goes: a Prometheus endpoint and/or OTLP.

``configure(service, metrics_address)`` installs OpenTelemetry's meter (and tracer)
providers once per process: a Prometheus scrape endpoint on ``metrics_address`` when given,
and OTLP export (gRPC) of metrics and traces when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set
(the Compose file points it at the collector). Traces: every device and admin RPC is a
server span, every record a stage handles a consumer span continuing its producer's trace
(W3C context in the Kafka headers), every database statement a span. Without either,
nothing is installed and every instrument stays a no-op.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

log = logging.getLogger("tsfl.observability")


@dataclass
class Telemetry:
    metrics_address: str | None  # host:port actually bound (port 0 resolved)
    otlp_endpoint: str | None
    meter_provider: MeterProvider | None
    tracer_provider: TracerProvider | None

    def shutdown(self) -> None:
        for provider in (self.meter_provider, self.tracer_provider):
            if provider is not None:
                try:
                    provider.shutdown()
                except Exception as exc:  # an unreachable collector must not block a stop
                    log.warning("telemetry shutdown: %s", exc)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--metrics must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def instrument_database() -> None:
    """Database statements as spans (engines created from now on)."""
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def configure(service: str, metrics_address: str | None = None,
              otlp_endpoint: str | None = None) -> Telemetry:
    """Install the providers for ``service`` (call once, before the first instrument)."""
    otlp_endpoint = otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    resource = Resource.create({"service.name": f"tsfl-{service}",
                                "service.namespace": "truststram-fl"})
    readers: list[MetricReader] = []
    bound = None
    if metrics_address:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        host, port = _split(metrics_address)
        server, _thread = start_http_server(port, addr=host)
        bound = f"{host}:{server.server_address[1]}"
        readers.append(PrometheusMetricReader())
    tracer_provider = None
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        insecure = otlp_endpoint.startswith("http://")
        readers.append(PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=otlp_endpoint, insecure=insecure),
            export_interval_millis=15_000))
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=otlp_endpoint, insecure=insecure)))
        trace.set_tracer_provider(tracer_provider)
        instrument_database()
    meter_provider = None
    if readers:
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        metrics.set_meter_provider(meter_provider)
    return Telemetry(bound, otlp_endpoint, meter_provider, tracer_provider)
