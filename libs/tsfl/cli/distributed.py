"""CLI commands of the distributed deployment: service, stack, devices, job, audit."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

err = Console(stderr=True)
out = Console()
DEFAULT_COORDINATOR = "127.0.0.1:50051"
FLEET_CHANNELS = 4  # gRPC connections a `tsfl devices` fleet's devices share


def admin_token(args: argparse.Namespace) -> str | None:
    """The admin token: --admin-token, else TSFL_ADMIN_TOKEN, else the local stack's
    (``--stack-dir``/admin-token, written by ``tsfl stack up``)."""
    global _TLS_CA
    _TLS_CA = getattr(args, "tls_ca", None) or os.environ.get("TSFL_TLS_CA")
    token = getattr(args, "admin_token", None) or os.environ.get("TSFL_ADMIN_TOKEN")
    if token:
        return token.strip()
    path = Path(getattr(args, "stack_dir", None) or ".tsfl-stack") / "admin-token"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def coordinator_address(args: argparse.Namespace) -> str:
    """Where the coordinator is: --coordinator, else TSFL_COORDINATOR, else the local
    stack's (``--stack-dir``/stack.json), else 127.0.0.1:50051."""
    given = getattr(args, "coordinator", None) or os.environ.get("TSFL_COORDINATOR")
    if given:
        return str(given)
    try:
        state = json.loads((Path(getattr(args, "stack_dir", None) or ".tsfl-stack")
                            / "stack.json").read_text())
        return str(state["grpc"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_COORDINATOR


class _Authed:
    """An AdminService stub whose every call carries the admin token."""

    def __init__(self, stub: Any, token: str | None):
        self._stub = stub
        self._md = (("authorization", f"Bearer {token}"),) if token else ()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        return lambda request, **kw: method(request, metadata=self._md, **kw)


_TLS_CA: str | None = None  # set from --tls-ca by the client commands


def _admin(address: str, token: str | None = None):
    """An AdminService stub over TLS (``--tls-ca``), or plaintext to a loopback address
    only: an admin token never crosses a network in the clear."""
    from tsfl.v1 import admin_pb2_grpc

    if _TLS_CA:
        with open(_TLS_CA, "rb") as fh:
            creds = grpc.ssl_channel_credentials(root_certificates=fh.read())
        channel = grpc.secure_channel(address, creds)
    else:
        host = address.rsplit(":", 1)[0].strip("[]")
        if token and not (host in ("localhost", "::1") or host.startswith("127.")):
            raise SystemExit(f"error: refusing to send an admin token in plaintext to "
                             f"{address}; give --tls-ca CA.pem (the coordinator serves TLS "
                             "with --tls-cert)")
        channel = grpc.insecure_channel(address)
    return channel, _Authed(admin_pb2_grpc.AdminServiceStub(channel), token)


def _admin_call(address: str, method: str, request: Any, timeout: float,
                token: str | None = None) -> tuple[Any, int | None]:
    """One unary AdminService call: ``(response, None)`` or ``(None, exit status)``."""
    channel, admin = _admin(address, token)
    try:
        return getattr(admin, method)(request, timeout=timeout), None
    except grpc.RpcError as exc:
        return None, _rpc_error(exc)
    finally:
        channel.close()


def _rpc_error(exc: grpc.RpcError) -> int:
    err.print(f"[bold red]error:[/] {exc.code().name}: {exc.details()}", highlight=False)
    return 2 if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                               grpc.StatusCode.NOT_FOUND) else 1


# -- service ---------------------------------------------------------------------------------
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


# -- stack -----------------------------------------------------------------------------------
def cmd_stack(args: argparse.Namespace) -> int:
    from tsfl.runtime import stack

    directory = Path(args.dir)
    if args.action == "up":
        try:
            state = stack.up(directory, kafka=args.kafka, database=args.database,
                             grpc_port=args.grpc_port)
        except stack.StackError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            return 1
        out.print(f"coordinator gRPC: {state.grpc}", highlight=False)
        err.print(f"kafka {state.kafka}, database {state.database}, logs in {directory}/",
                  highlight=False)
        return 0
    if args.action == "status":
        try:
            states = stack.describe(directory)
            database = stack.StackState.load(directory).database
        except FileNotFoundError as exc:
            err.print(str(exc))
            return 1
        table = Table("component", "state", "address")
        for name, (st, address) in states.items():
            table.add_row(name, st, address)
        table.add_row("database", "", database)
        out.print(table)
        bad = [n for n, (st, _) in states.items() if st not in ("serving", "running",
                                                                "external")]
        return 1 if bad else 0
    stack.down(directory)
    err.print("stack stopped")
    return 0


# -- devices ---------------------------------------------------------------------------------
def device_tls(args: argparse.Namespace) -> Any:
    """The devices' TLS material: --tls-ca (the coordinator's CA), with --tls-cert and
    --tls-key for mTLS; None for plaintext (loopback only, like the admin calls)."""
    from tsfl.rpc.client import TLSConfig

    ca = getattr(args, "tls_ca", None) or os.environ.get("TSFL_TLS_CA")
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if not ca:
        if cert or key:
            raise ValueError("--tls-cert/--tls-key need --tls-ca")
        return None
    if bool(cert) != bool(key):
        raise ValueError("mTLS needs both --tls-cert and --tls-key")

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return TLSConfig(Path(ca).read_bytes(), read(cert), read(key))


def cmd_devices(args: argparse.Namespace) -> int:
    from tsfl.config import parse_job
    from tsfl.v1 import admin_pb2

    args.coordinator = coordinator_address(args)
    try:
        tls = device_tls(args)
    except (ValueError, OSError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    info, failed = _admin_call(args.coordinator, "GetJob", admin_pb2.JobRef(job_id=args.job),
                               10, admin_token(args))
    if failed is not None:
        return failed
    import yaml

    spec = parse_job(yaml.safe_load(info.spec_yaml))
    he_keys = []
    authority = None
    threshold = spec.crypto.mode == "he" and spec.crypto.he.keying == "threshold"
    if threshold:  # silos: a key ceremony through the coordinator, then openings
        try:
            authority = threshold_authority(spec, args.authority_key)
        except (OSError, ValueError) as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            return 2
    elif args.he_keys:
        from tsfl.he import HeError, read_secret
        from tsfl.identity import IdentityAuthority

        try:
            he_keys.append(read_secret(args.he_keys))
            if not args.authority_key:
                raise HeError("identity", "--he-keys needs --authority-key: each device "
                                          "signs its encrypted sections with an identity "
                                          "that authority certifies")
            authority = IdentityAuthority.load(args.authority_key)
        except (HeError, OSError, ValueError) as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            return 2
    if spec.crypto.mode == "secagg":  # devices sign their keys, trust only this authority
        from tsfl.identity import IdentityAuthority

        try:
            if not args.authority_key:
                raise ValueError("a SecAgg+ job needs --authority-key: each device signs "
                                 "its keys with an identity that authority certifies, and "
                                 "uses only keys its certificates vouch for")
            authority = IdentityAuthority.load(args.authority_key)
        except (OSError, ValueError) as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            return 2
    counts = asyncio.run(run_fleet(args.coordinator, args.job, args.token, spec, args.count,
                                   he_keys, tls, authority,
                                   share_dir=args.he_keys if threshold else None))
    err.print(f"{len(counts)} devices done, {sum(counts)} updates contributed")
    return 0


def threshold_authority(spec, authority_key: str | None) -> Any:
    """The identity authority of a threshold-HE job's simulated silos: the private key
    given (``--authority-key``), which must be one the job trusts (``crypto.he.authority``:
    the silos' certificates sign every ceremony and opening message)."""
    from tsfl.identity import IdentityAuthority

    if not authority_key:
        raise ValueError("a threshold-HE job needs --authority-key: each silo signs its "
                         "key-ceremony, section and opening messages with an identity that "
                         "authority certifies, and trusts only certificates it issued")
    authority = IdentityAuthority.load(authority_key)
    if authority.public_key.hex() not in (spec.crypto.he.authority or []):
        raise ValueError(f"{authority_key} is not one of the job's identity authorities "
                         "(crypto.he.authority)")
    return authority


async def run_fleet(address: str, job_id: str, token: str, spec, count: int,
                    he_keys: Sequence[Any] = (), tls: Any = None,
                    authority: Any = None, *, share_dir: str | None = None,
                    silos: dict[str, Any] | None = None) -> list[int]:
    """``count`` simulated devices (the embedded run's partitions) as real gRPC clients;
    ``he_keys``: the secret key set of an HE job (shared keying), which every device of the
    fleet holds; ``authority`` (an :class:`~tsfl.identity.IdentityAuthority`) certifies
    each device's identity, with which it signs its encrypted sections (HE) or its keys
    (SecAgg+, whose devices trust only that authority; a fresh one when none is given).
    Threshold HE: each device is a silo trusting only ``authority``; it makes its share in
    the job's key ceremony (written under ``share_dir``/JOB/DEVICE.share when given) and
    opens each model with the others; ``silos`` receives each one's
    :class:`~tsfl.sdk.he.HeDevice`."""
    from tsfl.identity import DeviceIdentity
    from tsfl.rpc.client import open_channel, start_client
    from tsfl.runtime.simulation import build_federation
    from tsfl.sdk.he import HeDevice, SiloKeys

    fed = build_federation(spec)
    ids = fed.client_ids[:count]

    if spec.crypto.mode == "secagg":  # no authority given: one for this fleet alone
        from tsfl.runtime.secagg_setup import secagg_devices

        for cid, device in secagg_devices(spec, ids, authority).items():
            fed.clients[cid].secagg_device = device  # ClientRunner's default

    def keys_of(cid: str) -> list[Any]:
        if authority is None:
            return list(he_keys)
        identity = DeviceIdentity.enrol(cid, authority)
        return [SiloKeys(k, identity) for k in he_keys]

    def silo(cid: str) -> HeDevice | None:
        if not (spec.crypto.mode == "he" and spec.crypto.he.keying == "threshold"):
            return None
        if authority is None:
            raise ValueError("threshold-HE silos need their identity authority")
        device = HeDevice(identity=DeviceIdentity.enrol(cid, authority),
                          trusted=[authority.public_key], share_dir=share_dir)
        if silos is not None:
            silos[cid] = device
        return device

    # They share one model workspace and train one at a time in this event loop
    # (offload=False), like the embedded simulation, and a few connections (not one each).
    channels = [open_channel(address, tls, own_connection=True)
                for _ in range(max(1, min(len(ids), FLEET_CHANNELS)))]
    tasks = [asyncio.ensure_future(start_client(
        address, fed.clients[cid], job_id=job_id, device_id=cid, token=token,
        layout=fed.workspace.layout, offload=False, he_keys=keys_of(cid), tls=tls,
        he=silo(cid), channel=channels[i % len(channels)])) for i, cid in enumerate(ids)]
    try:
        return list(await asyncio.gather(*tasks))
    finally:  # a device that failed ends the fleet: the others stop before their channels
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()


# -- jobs ------------------------------------------------------------------------------------
def cmd_job(args: argparse.Namespace) -> int:
    from tsfl.config import find_job_file
    from tsfl.v1 import admin_pb2

    args.coordinator = coordinator_address(args)
    if args.target is None and args.action != "list":
        err.print(f"[bold red]error:[/] tsfl job {args.action} needs "
                  f"{'a job spec' if args.action == 'submit' else 'a job id'}")
        return 2
    channel, admin = _admin(args.coordinator, admin_token(args))
    try:
        if args.action == "list":
            jobs = admin.ListJobs(admin_pb2.ListJobsRequest(status=(args.target or "").upper()),
                                  timeout=30)
            table = Table("job", "status", "rounds", "accuracy", "devices", "reason")
            for j in jobs.jobs:
                acc = f"{j.test_accuracy:.4f}" if j.HasField("test_accuracy") else ""
                table.add_row(j.job_id, j.status, f"{j.rounds_done}/{j.rounds_total}", acc,
                              str(j.devices), j.reason)
            out.print(table)
        elif args.action == "submit":
            try:
                text = find_job_file(args.target).read_text(encoding="utf-8")
            except OSError as exc:
                err.print(f"[bold red]error:[/] cannot read {args.target}: "
                          f"{getattr(exc, 'strerror', None) or exc}", highlight=False)
                return 2
            try:
                if args.he_keys:
                    text = with_he_key(text, args.he_keys)
                if args.authority:
                    text = with_authority(text, args.authority)
            except ValueError as exc:
                err.print(f"[bold red]error:[/] {exc}", highlight=False)
                return 2
            info = admin.SubmitJob(admin_pb2.SubmitJobRequest(
                spec_yaml=text, enrollment_token=args.token or ""), timeout=120)
            out.print(info.job_id, highlight=False)
            err.print(f"enrollment token: {info.enrollment_token}  (devices: tsfl devices "
                      f"--coordinator {args.coordinator} --job {info.job_id} --token "
                      f"{info.enrollment_token} --count N)", highlight=False)
        elif args.action == "status":
            info = admin.GetJob(admin_pb2.JobRef(job_id=args.target), timeout=10)
            out.print(json.dumps({"job_id": info.job_id, "name": info.name,
                                  "status": info.status, "reason": info.reason,
                                  "rounds_done": info.rounds_done,
                                  "rounds_total": info.rounds_total,
                                  "model_version": info.model_version,
                                  "devices": info.devices,
                                  "test_accuracy": info.test_accuracy
                                  if info.HasField("test_accuracy") else None}, indent=2))
        elif args.action == "cancel":
            info = admin.CancelJob(admin_pb2.JobRef(job_id=args.target), timeout=30)
            out.print(f"{info.job_id}: {info.status}", highlight=False)
        elif args.action == "rounds":
            rounds = admin.ListRounds(admin_pb2.JobRef(job_id=args.target), timeout=30)
            table = Table("round", "state", "accepted", "rejected", "cohort", "model",
                          "accuracy", "loss", "ε", "reason")
            for r in rounds.rounds:
                m = round_metrics(r)
                table.add_row(str(r.round), r.state, str(r.accepted), str(r.rejected),
                              str(r.cohort_size), str(r.model_version or ""),
                              _num(m["test_accuracy"]), _num(m["test_loss"]),
                              _num(m["epsilon"]), r.reason)
            out.print(table)
        elif args.action == "metrics":
            from tsfl.runtime.report import plot_curves, write_json

            rounds = admin.ListRounds(admin_pb2.JobRef(job_id=args.target), timeout=30)
            metrics = [round_metrics(r) for r in rounds.rounds if r.state == "PUBLISHED"]
            directory = Path(args.out or f"runs/{args.target}")
            directory.mkdir(parents=True, exist_ok=True)
            write_json(directory / "metrics.json", metrics)
            plot_curves(metrics, directory / "curves.png", args.target)
            err.print(f"{len(metrics)} rounds -> {directory}/metrics.json, curves.png",
                      highlight=False)
        elif args.action == "participants":
            parts = admin.ListParticipants(admin_pb2.ParticipantsRequest(
                job_id=args.target, round=args.round or 0), timeout=30)
            table = Table("round", "device", "status", "examples", "bytes up", "reason")
            for p in parts.participants:
                table.add_row(str(p.round), p.client_id, p.status, str(p.num_examples),
                              str(p.bytes_up), p.reason)
            out.print(table)
        else:  # watch
            info = admin.GetJob(admin_pb2.JobRef(job_id=args.target), timeout=10)
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                          TextColumn("round {task.completed}/{task.total} {task.fields[st]}"),
                          TimeElapsedColumn(), console=err) as progress:
                bar = progress.add_task(info.job_id, total=info.rounds_total, st="")
                final = "RUNNING"
                for r in admin.WatchJob(admin_pb2.JobRef(job_id=args.target)):
                    if r.round == 0:
                        final = r.job_status
                        break
                    done = r.round if r.state in ("PUBLISHED", "FAILED") else r.round - 1
                    line = round_line(r)
                    progress.update(bar, completed=done, st=line or r.state)
                    if line and (r.state == "FAILED" or r.HasField("test_accuracy")
                                 or r.HasField("train_loss")):
                        progress.console.print(f"round {r.round}: {line}", highlight=False)
            out.print(f"{args.target}: {final}", highlight=False)
            return 0 if final == "COMPLETED" else 1
    except grpc.RpcError as exc:
        return _rpc_error(exc)
    finally:
        channel.close()
    return 0


def round_metrics(r: Any) -> dict[str, Any]:
    """A RoundInfo as a metrics.json row (the keys ``tsfl run`` writes)."""
    def opt(name: str) -> float | None:
        return getattr(r, name) if r.HasField(name) else None

    return {"round": r.round, "model_version": r.model_version,
            "test_accuracy": opt("test_accuracy"), "test_loss": opt("test_loss"),
            "train_loss": opt("train_loss"), "epsilon": opt("epsilon"),
            "accepted": r.accepted, "rejected": r.rejected, "cohort": r.cohort_size,
            "bytes_up": r.bytes_up, "bytes_down": r.bytes_down}


def round_line(r: Any) -> str:
    """One round, for a person: state, accuracy, loss, ε (what is known)."""
    m = round_metrics(r)
    parts = [r.state]
    if m["test_accuracy"] is not None:
        parts.append(f"acc {m['test_accuracy']:.4f}")
    if m["test_loss"] is not None:
        parts.append(f"loss {m['test_loss']:.4f}")
    elif m["train_loss"] is not None:
        parts.append(f"train loss {m['train_loss']:.4f}")
    if m["epsilon"] is not None:
        parts.append(f"ε {m['epsilon']:.3g}")
    parts.append(f"{r.accepted}/{r.cohort_size} accepted")
    if r.reason:
        parts.append(f"({r.reason})")
    return "  ".join(parts)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def with_he_key(spec_yaml: str, keys_dir: str) -> str:
    """The spec with ``crypto.he`` key id, identity authority and ``keying: shared`` set
    from a shared key set's public part (only the public part is read: the secret never
    goes near the coordinator)."""
    import yaml

    from tsfl.he import HeError, read_public

    try:
        public = read_public(keys_dir)
        raw = json.loads((Path(keys_dir) / "public.json").read_text()
                         if Path(keys_dir).is_dir() else Path(keys_dir).read_text())
    except (HeError, OSError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    data = yaml.safe_load(spec_yaml)
    if not isinstance(data, dict):
        raise ValueError("the job spec is not a mapping")
    crypto = data.setdefault("crypto", {})
    if not isinstance(crypto, dict) or crypto.get("mode") != "he":
        raise ValueError("--he-keys is for jobs with crypto.mode he")
    he = crypto.setdefault("he", {})
    if he.get("key_id") not in (None, public.key_id):
        raise ValueError(f"the spec names key {he['key_id']!r}, {keys_dir} holds "
                         f"{public.key_id!r}")
    he["key_id"] = public.key_id
    he["keying"] = "shared"
    if raw.get("authority"):
        he["authority"] = list(raw["authority"])
    return yaml.safe_dump(data, sort_keys=False)


def with_authority(spec_yaml: str, authority: str) -> str:
    """The spec with ``crypto.he.authority`` set to an identity authority's public key
    (hex or a ``.pub`` file): a threshold-HE job's silos are certified by it, and make
    their key in a ceremony through the coordinator before round 1."""
    import yaml

    from tsfl.identity import IdentityError, read_authority_public

    try:
        public = read_authority_public(authority)
    except (IdentityError, OSError) as exc:
        raise ValueError(str(exc)) from None
    data = yaml.safe_load(spec_yaml)
    crypto = data.get("crypto") if isinstance(data, dict) else None
    if not isinstance(crypto, dict) or crypto.get("mode") != "he":
        raise ValueError("--authority is for jobs with crypto.mode he")
    he = crypto.get("he") if isinstance(crypto.get("he"), dict) else {}
    crypto["he"] = {**he, "authority": [public.hex()]}
    return yaml.safe_dump(data, sort_keys=False)


def cmd_keys(args: argparse.Namespace) -> int:
    """``tsfl keys init JOB.yaml --out DIR --authority CA.pub``: the key authority's
    step for a shared-key HE job; ``tsfl keys authority --out CA.key``: a fresh identity
    authority (private key mode 0600, public key in ``CA.key.pub``), which certifies the
    devices that sign encrypted sections."""
    if args.action == "authority":
        from tsfl.identity import IdentityAuthority

        if Path(args.out).exists() and not args.force:
            err.print(f"[bold red]error:[/] {args.out} exists (--force replaces it)",
                      highlight=False)
            return 2
        ca = IdentityAuthority.generate()
        ca.save(args.out)
        out.print(ca.public_key.hex(), highlight=False)
        err.print(f"identity authority: {args.out} (keep it off the server), public key "
                  f"{args.out}.pub", highlight=False)
        return 0
    if not args.job or not args.authority:
        err.print("[bold red]error:[/] tsfl keys init needs JOB.yaml and --authority",
                  highlight=False)
        return 2
    from tsfl.config import ConfigError, load_job
    from tsfl.he import HeError, SecretKeySet
    from tsfl.he.job import he_params
    from tsfl.identity import IdentityError, read_authority_public
    from tsfl.runtime.simulation import initial_model

    try:
        spec = load_job(args.job)
        if spec.crypto.mode != "he":
            raise HeError("params", f"{args.job} does not use crypto.mode he")
        authority = read_authority_public(args.authority)
        layout, _ = initial_model(spec)
        keys = SecretKeySet(he_params(spec, layout))
    except (ConfigError, HeError, IdentityError, OSError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    out_dir = Path(args.out)
    if (out_dir / "secret.key").exists() and not args.force:
        err.print(f"[bold red]error:[/] {out_dir}/secret.key exists (a key set per job; "
                  "--force replaces it)", highlight=False)
        return 2
    public, secret = keys.write(out_dir)
    raw = json.loads(public.read_text())
    raw["authority"] = [authority.hex()]  # whose certificates sign the devices' sections
    public.write_text(json.dumps(raw, indent=2) + "\n")
    p = keys.params
    out.print(keys.key_id, highlight=False)
    err.print("a shared key set (crypto.he.keying: shared, trusted silos; tsfl job submit "
              "--he-keys sets it). ", end="", highlight=False)
    err.print(f"CKKS N={p.poly_degree}, q {p.prime_bits} bits, scale 2^{p.scale_bits}, "
              f"{p.security}-bit security. Public part (for the coordinator: tsfl job submit "
              f"--he-keys {out_dir}): {public}. Secret key (devices only: tsfl devices "
              f"--he-keys {out_dir}): {secret}", highlight=False)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from tsfl.v1 import admin_pb2

    args.coordinator = coordinator_address(args)
    trail, failed = _admin_call(args.coordinator, "QueryAudit",
                                admin_pb2.JobRef(job_id=args.job), 30, admin_token(args))
    if failed is not None:
        return failed
    for e in trail.events:
        print(json.dumps({"seq": e.seq, "at": e.created_at, "kind": e.kind, "actor": e.actor,
                          "payload": json.loads(e.payload_json), "hash": e.hash[:16]}))
    verdict = "intact" if trail.chain_valid else f"BROKEN ({trail.chain_detail})"
    err.print(f"{len(trail.events)} events; hash chain {verdict}")
    return 0 if trail.chain_valid else 1


def cmd_admin(args: argparse.Namespace) -> int:
    """Issue or revoke admin tokens, on the coordinator's database directly (an operator
    with database access; the token is printed once and stored only as a salted hash)."""
    if not args.database:
        err.print("[bold red]error:[/] --database (or TSFL_DATABASE) is required")
        return 2
    from tsfl.runtime.stack import issue_admin_token

    if args.action == "create-token":
        if not (args.role and args.name):
            err.print("[bold red]error:[/] create-token needs --role and --name")
            return 2
        try:
            token = issue_admin_token(args.database, args.name, args.role)
        except ValueError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            return 2
        out.print(token, highlight=False)
        err.print(f"{args.role} token for {args.name} (shown once; pass it as "
                  "--admin-token or TSFL_ADMIN_TOKEN)", highlight=False)
        return 0
    if not args.token_id:
        err.print("[bold red]error:[/] revoke-token needs the token id")
        return 2

    async def revoke() -> bool:
        from tsfl.storage import Store

        store = await Store.open(args.database)
        try:
            return await store.revoke_admin_token(args.token_id)
        finally:
            await store.close()

    revoked = asyncio.run(revoke())
    err.print("revoked" if revoked else "no such live token")
    return 0 if revoked else 1


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

    st = sub.add_parser("stack", help="the local stack: broker + six services as processes")
    st.add_argument("action", choices=["up", "status", "down"])
    st.add_argument("--dir", default=".tsfl-stack", help="state and logs")
    st.add_argument("--kafka", help="use this broker instead of starting one")
    st.add_argument("--database", help="database URL (default: a SQLite file in --dir)")
    st.add_argument("--grpc-port", type=int, default=50051)
    st.set_defaults(func=cmd_stack)

    dev = sub.add_parser("devices", help="run simulated devices as real gRPC clients")
    dev.add_argument("--job", required=True)
    dev.add_argument("--token", required=True, help="the job's enrollment token")
    dev.add_argument("--count", type=int, required=True)
    dev.add_argument("--he-keys", metavar="DIR",
                     help="shared keying: the HE job's key set (tsfl keys init), devices "
                          "encrypt with it; threshold keying: where each silo writes the "
                          "share it makes in the key ceremony (DIR/JOB/DEVICE.share)")
    dev.add_argument("--authority-key", "--identity-authority", metavar="FILE",
                     help="HE and SecAgg+: the identity authority's private key (PEM); it "
                          "certifies each simulated device, which signs its encrypted "
                          "sections or SecAgg+ keys (SecAgg+ devices trust only it)")
    dev.add_argument("--tls-cert", help="mTLS: the devices' client certificate (PEM)")
    dev.add_argument("--tls-key", help="mTLS: its private key (PEM)")
    dev.set_defaults(func=cmd_devices)

    job = sub.add_parser("job", help="submit, inspect, watch or cancel jobs")
    job.add_argument("action", choices=["submit", "list", "status", "watch", "cancel",
                                        "rounds", "participants", "metrics"])
    job.add_argument("target", nargs="?", help="submit: JOB.yaml or a bundled example's "
                                               "name (digits-dp); list: a status filter; "
                                               "else the job id")
    job.add_argument("--round", type=int, help="participants: only this round")
    job.add_argument("--out", help="metrics: directory for metrics.json and curves.png "
                                   "(default runs/JOB_ID)")
    job.add_argument("--token", help="submit: the enrollment token devices will present")
    job.add_argument("--he-keys", metavar="DIR", help="submit: the HE key set's public part "
                     "(its key id goes into crypto.he.key_id)")
    job.add_argument("--authority", metavar="CA.pub",
                     help="submit: the identity authority (public key, hex or .pub file) "
                          "certifying the silos of a threshold-HE job (crypto.he.authority)")
    job.set_defaults(func=cmd_job)

    keys = sub.add_parser("keys", help="HE keys: tsfl keys init JOB.yaml --out DIR "
                                       "--authority CA.pub; tsfl keys authority --out CA.key")
    keys.add_argument("action", choices=["init", "authority"])
    keys.add_argument("job", nargs="?", help="init: the job spec (crypto.mode he, keying "
                                             "shared) the keys are for")
    keys.add_argument("--out", required=True, help="init: directory for public.json and "
                                                   "secret.key; authority: the key file")
    keys.add_argument("--force", action="store_true", help="replace an existing key set")
    keys.add_argument("--authority",
                      help="the identity authority (public key, hex or .pub file) whose "
                           "device certificates sign encrypted sections")
    keys.set_defaults(func=cmd_keys)

    audit = sub.add_parser("audit", help="print a job's audit trail and check its hash chain")
    audit.add_argument("job")
    audit.set_defaults(func=cmd_audit)

    for client in (dev, job, audit):  # the admin API's callers
        client.add_argument("--coordinator", help="HOST:PORT (default: TSFL_COORDINATOR, "
                                                  "else the local stack's, else "
                                                  f"{DEFAULT_COORDINATOR})")
        client.add_argument("--admin-token", help="admin token (default: TSFL_ADMIN_TOKEN, "
                                                  "else STACK_DIR/admin-token)")
        client.add_argument("--stack-dir", default=".tsfl-stack",
                            help="the local stack whose admin token to use")
        client.add_argument("--tls-ca", help="the CA (PEM) of a coordinator serving TLS "
                                             "(env TSFL_TLS_CA); without it, plaintext to a "
                                             "loopback address only")

    adm = sub.add_parser("admin", help="admin identities: tsfl admin create-token --role R "
                                       "--name N")
    adm.add_argument("action", choices=["create-token", "revoke-token"])
    adm.add_argument("token_id", nargs="?", help="revoke-token: the token's id (its middle "
                                                 "part)")
    adm.add_argument("--role", choices=["viewer", "submitter", "operator"])
    adm.add_argument("--name", help="create-token: who holds it (audited on every call)")
    adm.add_argument("--database", default=env("TSFL_DATABASE"),
                     help="the coordinator's database (env TSFL_DATABASE)")
    adm.set_defaults(func=cmd_admin)


__all__ = ["add_commands", "run_fleet"]
