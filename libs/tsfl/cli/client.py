"""How the CLI reaches the coordinator's AdminService: its address, the admin token, TLS,
the authenticated stub, and the options every admin-API command shares."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console

err = Console(stderr=True)
DEFAULT_COORDINATOR = "127.0.0.1:50051"


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


def admin_stub(address: str, token: str | None = None) -> tuple[grpc.Channel, _Authed]:
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


def admin_call(address: str, method: str, request: Any, timeout: float,
                token: str | None = None) -> tuple[Any, int | None]:
    """One unary AdminService call: ``(response, None)`` or ``(None, exit status)``."""
    channel, admin = admin_stub(address, token)
    try:
        return getattr(admin, method)(request, timeout=timeout), None
    except grpc.RpcError as exc:
        return None, rpc_error(exc)
    finally:
        channel.close()


def rpc_error(exc: grpc.RpcError) -> int:
    """Report a failed admin call; its exit status (2: the request was wrong)."""
    err.print(f"[bold red]error:[/] {exc.code().name}: {exc.details()}", highlight=False)
    return 2 if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                               grpc.StatusCode.NOT_FOUND) else 1



def add_client_options(parser: argparse.ArgumentParser) -> None:
    """The options of a command that calls the admin API: where, as whom, over what TLS."""
    parser.add_argument("--coordinator", help="HOST:PORT (default: TSFL_COORDINATOR, "
                                              "else the local stack's, else "
                                              f"{DEFAULT_COORDINATOR})")
    parser.add_argument("--admin-token", help="admin token (default: TSFL_ADMIN_TOKEN, "
                                              "else STACK_DIR/admin-token)")
    parser.add_argument("--stack-dir", default=".tsfl-stack",
                        help="the local stack whose admin token to use")
    parser.add_argument("--tls-ca", help="the CA (PEM) of a coordinator serving TLS "
                                         "(env TSFL_TLS_CA); without it, plaintext to a "
                                         "loopback address only")
