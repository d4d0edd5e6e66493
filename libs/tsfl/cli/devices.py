"""``tsfl devices``: a fleet of simulated devices, as real gRPC clients, joins a job
on the coordinator (with the TLS, HE keys and identity authority it needs)."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from tsfl.cli.client import add_client_options, admin_call, admin_token, coordinator_address

if TYPE_CHECKING:
    from tsfl.sdk.grpc_transport import TLSConfig

err = Console(stderr=True)


def device_tls(args: argparse.Namespace) -> TLSConfig | None:
    """The devices' TLS material: --tls-ca (the coordinator's CA), with --tls-cert and
    --tls-key for mTLS; None for plaintext (loopback only, like the admin calls)."""
    from tsfl.sdk.grpc_transport import TLSConfig

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
    from tsfl.runtime.fleet import run_fleet, threshold_authority
    from tsfl.v1 import admin_pb2

    args.coordinator = coordinator_address(args)
    try:
        tls = device_tls(args)
    except (ValueError, OSError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    info, failed = admin_call(args.coordinator, "GetJob", admin_pb2.JobRef(job_id=args.job),
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


def add_commands(sub: argparse._SubParsersAction) -> None:
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
    add_client_options(dev)
