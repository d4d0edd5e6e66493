"""One pipeline role as its own process: ``tsfl service NAME``.

Wiring only: a Kafka bus, the store, the role; the coordinator adds its gRPC server
(devices and admins) and the job loops, and resumes running jobs from the store. Every
service answers the gRPC health check, and watches its broker
(:class:`~tsfl.bus.liveness.BrokerWatch`): NOT_SERVING while the broker is unreachable,
consumers renewed and jobs resumed when it is back (:mod:`tsfl.runtime.outage`); the Kafka
client's repeated failure lines are throttled (:mod:`tsfl.bus.log_throttle`). SIGTERM
stops it gracefully (health goes NOT_SERVING, the consumer leaves its group, nothing
uncommitted is lost) and within seconds even while the broker is down: every stop step is
bounded (``STOP_STEP_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2_grpc

from tsfl.bus import TOPICS, log_throttle
from tsfl.bus.kafka import KafkaBus
from tsfl.bus.liveness import BrokerWatch
from tsfl.pipeline.names import role_class
from tsfl.rpc.common import SERVER_OPTIONS
from tsfl.rpc.health import COORDINATOR_HEALTH, health_servicer, set_serving
from tsfl.runtime.logs import asyncio_exception_handler
from tsfl.runtime.outage import OutageResponse
from tsfl.runtime.service_metrics import ServiceGauges
from tsfl.storage.store import Store

if TYPE_CHECKING:
    from tsfl.runtime.jobs import JobManager

log = logging.getLogger("tsfl.service")

#: the longest each step of a stop may take (jobs, role, gRPC server, bus, store)
STOP_STEP_S = 10.0
#: how long the role waits for its outputs in flight when the broker is down at stop
DRAIN_WHILE_DOWN_S = 0.5


@dataclass
class ServiceConfig:
    name: str
    kafka: str
    database: str
    grpc: str = "127.0.0.1:50051"      # coordinator: devices and admins
    health: str = "127.0.0.1:0"        # the other services' health endpoint
    chunk_bytes: int = 4 * 1024**2
    registration_timeout_s: float = 600.0
    tls_cert: str | None = None        # coordinator: server certificate (PEM file)
    tls_key: str | None = None         # coordinator: its private key
    tls_client_ca: str | None = None   # coordinator: require client certificates (mTLS)
    allow_insecure: bool = False       # coordinator: plaintext gRPC on a non-loopback address
    data_dir: str | None = None        # coordinator: npz/csv datasets are read from here only
    max_parameters: int = 1 << 29      # coordinator: the largest model a job may have
    max_running_jobs: int = 100        # coordinator: jobs running at once
    max_jobs_per_owner: int = 20       # coordinator: of which one submitter may own
    broker_probe_s: float = 1.0        # how often the broker's liveness is probed
    broker_timeout_s: float = 3.0      # a probe without an answer by then failed
    log_repeat_s: float = 30.0         # a repeated Kafka client line: once per this many s
    fetch_wait_ms: int = 500           # Kafka long poll (answered as soon as a record lands)


def _loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def server_credentials(cfg: ServiceConfig) -> grpc.ServerCredentials | None:
    """TLS for the coordinator's gRPC port; with a client CA, devices need certificates."""
    if not cfg.tls_cert and not cfg.tls_key:
        if cfg.tls_client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        if not _loopback(cfg.grpc) and not cfg.allow_insecure:
            raise ValueError(f"refusing plaintext gRPC on {cfg.grpc}: admin tokens and "
                             "device sessions would cross the network in the clear; give "
                             "--tls-cert/--tls-key, or --allow-insecure on a private network")
        return None
    if not (cfg.tls_cert and cfg.tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    with open(cfg.tls_cert, "rb") as fh:
        cert = fh.read()
    with open(cfg.tls_key, "rb") as fh:
        key = fh.read()
    client_ca = None
    if cfg.tls_client_ca:
        with open(cfg.tls_client_ca, "rb") as fh:
            client_ca = fh.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


async def run_service(cfg: ServiceConfig, stop: asyncio.Event | None = None) -> None:
    role_cls = role_class(cfg.name)  # this service's role alone (ValueError if unknown)
    server_credentials(cfg)  # fail fast on bad TLS settings, before connecting anything
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    loop.set_exception_handler(asyncio_exception_handler)
    log_throttle.install(cfg.log_repeat_s)
    bus = KafkaBus(cfg.kafka, chunk_bytes=cfg.chunk_bytes, client_id=f"tsfl-{cfg.name}",
                   fetch_max_wait_ms=cfg.fetch_wait_ms)
    await bus.start()
    try:
        await bus.create_topics(TOPICS)
        store = await Store.open(cfg.database)
    except BaseException:
        await bus.stop()
        raise
    watch = BrokerWatch(bus, TOPICS, interval_s=cfg.broker_probe_s,
                        timeout_s=cfg.broker_timeout_s)
    role = role_cls(bus, store)
    jobs: JobManager | None = None
    server: grpc.aio.Server
    health_server: grpc.aio.Server | None = None
    # Consume first and resume the running jobs, then open the doors: a job submitted
    # before the resume would otherwise be picked up twice.
    await role.start()
    if cfg.name == "coordinator":  # the only service that loads torch (models, evaluation)
        from tsfl.pipeline.coordinator import Coordinator
        from tsfl.rpc.server import start_coordinator_server
        from tsfl.runtime.admission import AdmissionPolicy
        from tsfl.runtime.jobs import JobManager

        assert isinstance(role, Coordinator)
        role.evaluate_releases = True  # model quality per round, as the embedded runner
        role.he_openings = True  # threshold HE: HeSetup (key ceremony) and HeOpen over gRPC
        jobs = JobManager(role, registration_timeout_s=cfg.registration_timeout_s,
                          policy=AdmissionPolicy(
                              Path(cfg.data_dir) if cfg.data_dir else None,
                              max_parameters=cfg.max_parameters,
                              max_running_jobs=cfg.max_running_jobs,
                              max_jobs_per_owner=cfg.max_jobs_per_owner), broker=watch)
        resumed = await jobs.resume_all()
        if resumed:
            log.info("resumed jobs: %s", ", ".join(resumed))
        served = await start_coordinator_server(role, jobs, cfg.grpc,
                                                credentials=server_credentials(cfg))
        server, port, health = served, served.port, served.health  # stop() flushes audits
        address = f"{cfg.grpc.rsplit(':', 1)[0]}:{port}"
        names: tuple[str, ...] = COORDINATOR_HEALTH
        if not cfg.health.endswith(":0"):
            # a plaintext health port beside the (possibly TLS) device port: what
            # Kubernetes' gRPC probes, which speak no TLS, can reach
            health_server = grpc.aio.server(options=SERVER_OPTIONS)
            health_pb2_grpc.add_HealthServicer_to_server(health, health_server)
            health_server.add_insecure_port(cfg.health)
            await health_server.start()
    else:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        health = health_servicer(server)
        port = server.add_insecure_port(cfg.health)
        await server.start()
        address = f"{cfg.health.rsplit(':', 1)[0]}:{port}"
        names = ("",)
    await set_serving(health, True, names)
    response = OutageResponse(role, health, names, jobs)
    watch.subscribe(response)
    await watch.start()
    gauges = ServiceGauges(cfg.name, watch, role)
    gauges.start()
    log_throttle.install(cfg.log_repeat_s)  # loggers the Kafka client created since
    log.info("%s serving on %s", cfg.name, address)
    print(f"tsfl {cfg.name} serving on {address}", flush=True)
    try:
        await stop.wait()
    finally:
        log.info("%s stopping", cfg.name)
        response.close()
        await gauges.stop()
        down = not watch.reachable
        await _bounded("broker watch", watch.stop())
        await set_serving(health, False, names)
        if down:  # what is in flight cannot land: do not wait for it
            role.drain_s = DRAIN_WHILE_DOWN_S
        if jobs is not None:
            await _bounded("job loops", jobs.stop())
        await _bounded(f"{cfg.name} role", role.stop())
        await _bounded("gRPC server", server.stop(grace=2.0))
        if health_server is not None:
            await _bounded("health server", health_server.stop(grace=0.5))
        await _bounded("bus", bus.stop(timeout_s=DRAIN_WHILE_DOWN_S if down else 5.0))
        await _bounded("store", store.close())
        log.info("%s stopped", cfg.name)


async def _bounded(what: str, step: Awaitable[None], timeout_s: float = STOP_STEP_S) -> None:
    """One stop step, abandoned (and logged) past ``timeout_s`` or when it fails: the
    process exits either way, and what it left is what a crash would have left."""
    try:
        await asyncio.wait_for(step, timeout_s)
    except TimeoutError:
        log.warning("stopping the %s took more than %.0f s; abandoned", what, timeout_s)
    except Exception as exc:
        log.warning("stopping the %s failed: %s", what, exc)
