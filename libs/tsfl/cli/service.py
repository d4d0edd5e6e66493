"""``tsfl service NAME`` runs one pipeline service of the distributed deployment;
``tsfl db migrate`` brings its database schema up to date."""

from __future__ import annotations

import argparse
import asyncio
import os

from rich.console import Console

from tsfl.cli.client import DEFAULT_COORDINATOR

err = Console(stderr=True)


def cmd_service(args: argparse.Namespace) -> int:
    missing = [f for f in ("kafka", "database") if not getattr(args, f)]
    if missing:
        err.print(f"[bold red]error:[/] missing {', '.join('--' + m for m in missing)} "
                  f"(or {', '.join('TSFL_' + m.upper() for m in missing)})", highlight=False)
        return 2
    if not 1 <= args.fetch_wait_ms <= 5000:
        err.print("[bold red]error:[/] --fetch-wait-ms must be in 1..5000", highlight=False)
        return 2
    from tsfl.runtime import logs
    from tsfl.runtime.observability import configure
    from tsfl.runtime.proc_stats import run_profiled
    from tsfl.runtime.service import ServiceConfig, run_service

    logs.configure(args.name, args.log_level)
    try:
        telemetry = configure(args.name, args.metrics)
    except (ValueError, OSError) as exc:
        err.print(f"[bold red]error:[/] metrics endpoint: {exc}", highlight=False)
        return 2
    if telemetry.metrics_address:
        print(f"tsfl {args.name} metrics on http://{telemetry.metrics_address}/metrics",
              flush=True)
    cfg = ServiceConfig(name=args.name, kafka=args.kafka, database=args.database,
                        grpc=args.grpc, health=args.health,
                        registration_timeout_s=args.registration_timeout,
                        tls_cert=args.tls_cert, tls_key=args.tls_key,
                        tls_client_ca=args.tls_client_ca, data_dir=args.data_dir,
                        allow_insecure=args.allow_insecure,
                        max_parameters=args.max_parameters,
                        max_running_jobs=args.max_running_jobs,
                        max_jobs_per_owner=args.max_jobs_per_submitter,
                        fetch_wait_ms=args.fetch_wait_ms)
    try:
        run_profiled(args.name, lambda: asyncio.run(run_service(cfg)))
    except (ValueError, OSError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    finally:
        telemetry.shutdown()
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    """``tsfl db migrate``: bring the database schema to this version (a Kubernetes Job
    runs it before a rollout; the services also migrate on start)."""
    if not args.database:
        err.print("[bold red]error:[/] --database (or TSFL_DATABASE) is required")
        return 2
    from tsfl.storage.store import Store

    async def migrate() -> None:
        store = await Store.open(args.database)
        await store.close()

    try:
        asyncio.run(migrate())
    except (OSError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1
    err.print("database schema is up to date")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from tsfl.pipeline.names import SERVICE_NAMES

    svc = sub.add_parser("service", help="run one pipeline service (distributed deployment)")
    svc.add_argument("name", choices=sorted(SERVICE_NAMES))
    env = os.environ.get
    svc.add_argument("--kafka", default=env("TSFL_KAFKA"),
                     help="bootstrap HOST:PORT (env TSFL_KAFKA)")
    svc.add_argument("--database", default=env("TSFL_DATABASE"),
                     help="postgresql+asyncpg://USER@HOST/DB or sqlite:///FILE "
                          "(env TSFL_DATABASE)")
    svc.add_argument("--grpc", default=env("TSFL_GRPC", DEFAULT_COORDINATOR),
                     help="coordinator: listen address (env TSFL_GRPC)")
    svc.add_argument("--health", default=env("TSFL_HEALTH", "127.0.0.1:0"),
                     help="health-check listen address (env TSFL_HEALTH)")
    svc.add_argument("--tls-cert", default=env("TSFL_TLS_CERT"),
                     help="coordinator: serve gRPC over TLS with this certificate (PEM)")
    svc.add_argument("--tls-key", default=env("TSFL_TLS_KEY"), help="its private key (PEM)")
    svc.add_argument("--tls-client-ca", default=env("TSFL_TLS_CLIENT_CA"),
                     help="require device certificates signed by this CA (mTLS)")
    svc.add_argument("--allow-insecure", action="store_true",
                     default=env("TSFL_ALLOW_INSECURE") == "1",
                     help="coordinator: allow plaintext gRPC on a non-loopback address (a "
                          "private network only; env TSFL_ALLOW_INSECURE=1)")
    svc.add_argument("--data-dir", default=env("TSFL_DATA_DIR"),
                     help="coordinator: the only directory npz/csv datasets and model.init "
                          "checkpoints are read from (env TSFL_DATA_DIR; default: none are "
                          "read)")
    svc.add_argument("--max-parameters", type=int, default=1 << 29,
                     help="coordinator: refuse jobs whose model has more parameters")
    svc.add_argument("--max-running-jobs", type=int, default=100,
                     help="coordinator: refuse new jobs while this many run")
    svc.add_argument("--max-jobs-per-submitter", type=int, default=20,
                     help="coordinator: the running jobs one admin identity may own")
    svc.add_argument("--registration-timeout", type=float, default=600.0,
                     help="coordinator: seconds a new job waits for its devices to enrol")
    svc.add_argument("--fetch-wait-ms", type=int,
                     default=int(env("TSFL_FETCH_WAIT_MS", "500")),
                     help="Kafka long poll: the broker holds an empty fetch this long (it "
                          "answers as soon as a record arrives); 1..5000 (env "
                          "TSFL_FETCH_WAIT_MS)")
    svc.add_argument("--metrics", default=env("TSFL_METRICS"),
                     help="serve Prometheus metrics on HOST:PORT (env TSFL_METRICS); OTLP "
                          "export follows OTEL_EXPORTER_OTLP_ENDPOINT")
    svc.add_argument("--log-level", default="INFO")
    svc.set_defaults(func=cmd_service)

    db = sub.add_parser("db", help="database schema: tsfl db migrate")
    db.add_argument("action", choices=["migrate"])
    db.add_argument("--database", default=env("TSFL_DATABASE"),
                    help="postgresql+asyncpg://USER@HOST/DB or sqlite:///FILE "
                         "(env TSFL_DATABASE)")
    db.set_defaults(func=cmd_db)
