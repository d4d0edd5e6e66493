"""Operational metrics: OpenTelemetry instruments with Prometheus-style names.

Every service records what it sees through :func:`instruments`; how they leave the process
(a Prometheus endpoint, OTLP, nothing) is the deployment's choice
(:mod:`tsfl.runtime.observability`). Until a meter provider is installed the instruments
are OpenTelemetry's no-ops, so the embedded deployment and the tests pay nothing.

**Label cardinality is bounded**: labels are the job id (``tsfl_job``: Prometheus keeps
``job`` for the scrape job), the stage and small enums (outcome, direction, reason) —
never a device id or a round number.

:data:`CATALOGUE` names every instrument as Prometheus scrapes it; the dashboard and the
alert rules in deploy/ query exactly these (tests/ops/test_observability.py checks that each
series they use appears in a real scrape of a running stack).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from opentelemetry import metrics as otel
from opentelemetry.metrics import _Gauge as Gauge  # the synchronous gauge (API >= 1.23)

#: instrument name -> (kind, unit, description). Prometheus adds ``_total`` to counters
#: and ``_bucket``/``_sum``/``_count`` to histograms.
CATALOGUE: dict[str, tuple[str, str, str]] = {
    "tsfl_training_round_duration_seconds": (
        "histogram", "s", "time from a round's opening to its model's release"),
    "tsfl_rounds": ("counter", "1", "rounds ended, by outcome (published, failed)"),
    "tsfl_model_accuracy": ("gauge", "1", "the released model's accuracy on the evaluation set"),
    "tsfl_model_loss": ("gauge", "1", "the released model's loss on the evaluation set"),
    "tsfl_convergence_rate": (
        "gauge", "1", "relative loss decrease of the last released round over the one before"),
    "tsfl_updates": ("counter", "1", "device updates seen by a stage, by outcome"),
    "tsfl_byzantine_clients_detected": (
        "counter", "1", "updates the robust rule or anomaly detector refused"),
    "tsfl_anomaly_detection_rate": (
        "gauge", "1", "fraction of the last round's updates flagged as anomalous"),
    "tsfl_client_participation_rate": (
        "gauge", "1", "accepted updates / cohort size, last round"),
    "tsfl_privacy_epsilon": ("gauge", "1", "ε spent so far (the job's accountant)"),
    "tsfl_privacy_budget_consumption": (
        "gauge", "1", "ε spent / the job's target ε (1 = budget exhausted)"),
    "tsfl_communication_overhead_bytes": (
        "counter", "By", "bytes exchanged with devices, by direction (up, down)"),
    "tsfl_aggregation_duration_seconds": (
        "histogram", "s", "time from a round's last accepted update to its aggregate"),
    "tsfl_broker_reachable": ("gauge", "1", "1 while this service reaches the Kafka broker"),
    "tsfl_consumer_lag_records": (
        "gauge", "1", "records on this stage's partitions not yet consumed"),
}

#: histogram buckets (seconds): a 10 ms aggregation to a 10-minute cross-silo round
SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                   300.0, 600.0)


def exposed_names() -> set[str]:
    """The Prometheus series the catalogue's instruments appear as."""
    out = set()
    for name, (kind, _, _) in CATALOGUE.items():
        if kind == "counter":
            out.add(name + "_total")
        elif kind == "histogram":
            out.update({name + "_bucket", name + "_sum", name + "_count"})
        else:
            out.add(name)
    return out


@dataclass(frozen=True)
class Instruments:
    round_duration: otel.Histogram
    rounds: otel.Counter
    accuracy: Gauge
    loss: Gauge
    convergence: Gauge
    updates: otel.Counter
    byzantine: otel.Counter
    anomaly_rate: Gauge
    participation: Gauge
    epsilon: Gauge
    budget: Gauge
    bytes: otel.Counter
    aggregation_duration: otel.Histogram
    broker_reachable: Gauge
    consumer_lag: Gauge


def _make(meter: otel.Meter, name: str) -> object:
    # the unit stays out of the instrument (the name already says it), or the Prometheus
    # exporter would append it a second time
    kind, _unit, description = CATALOGUE[name]
    if kind == "counter":
        return meter.create_counter(name, description=description)
    if kind == "histogram":
        return meter.create_histogram(name, description=description,
                                      explicit_bucket_boundaries_advisory=SECONDS_BUCKETS)
    return meter.create_gauge(name, description=description)


@functools.cache
def instruments() -> Instruments:
    """This process's instruments (created once, on the meter provider installed first:
    call :func:`tsfl.runtime.observability.configure` before the first use)."""
    meter = otel.get_meter("tsfl")
    m = functools.partial(_make, meter)
    return Instruments(
        round_duration=m("tsfl_training_round_duration_seconds"),  # type: ignore[arg-type]
        rounds=m("tsfl_rounds"),  # type: ignore[arg-type]
        accuracy=m("tsfl_model_accuracy"),  # type: ignore[arg-type]
        loss=m("tsfl_model_loss"),  # type: ignore[arg-type]
        convergence=m("tsfl_convergence_rate"),  # type: ignore[arg-type]
        updates=m("tsfl_updates"),  # type: ignore[arg-type]
        byzantine=m("tsfl_byzantine_clients_detected"),  # type: ignore[arg-type]
        anomaly_rate=m("tsfl_anomaly_detection_rate"),  # type: ignore[arg-type]
        participation=m("tsfl_client_participation_rate"),  # type: ignore[arg-type]
        epsilon=m("tsfl_privacy_epsilon"),  # type: ignore[arg-type]
        budget=m("tsfl_privacy_budget_consumption"),  # type: ignore[arg-type]
        bytes=m("tsfl_communication_overhead_bytes"),  # type: ignore[arg-type]
        aggregation_duration=m("tsfl_aggregation_duration_seconds"),  # type: ignore[arg-type]
        broker_reachable=m("tsfl_broker_reachable"),  # type: ignore[arg-type]
        consumer_lag=m("tsfl_consumer_lag_records"),  # type: ignore[arg-type]
    )
