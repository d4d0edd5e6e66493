"""``tsfl admin create-token|revoke-token``: admin identities, issued and revoked on
the coordinator's database directly."""

from __future__ import annotations

import argparse
import asyncio
import os

from rich.console import Console

err = Console(stderr=True)
out = Console()


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
    env = os.environ.get
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

