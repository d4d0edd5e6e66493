"""``tsfl stack up|status|down``: the local stack (a broker and the six services as
processes) for trying the distributed deployment on one machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

err = Console(stderr=True)
out = Console()


def cmd_stack(args: argparse.Namespace) -> int:
    from tsfl.runtime import stack

    directory = Path(args.dir)
    if args.action == "up":
        try:
            state = stack.up(directory, kafka=args.kafka, database=args.database,
                             grpc_port=args.grpc_port, aggregators=args.aggregators,
                             byzantine=args.byzantine)
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


def add_commands(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("stack", help="the local stack: broker + six services as processes")
    st.add_argument("action", choices=["up", "status", "down"])
    st.add_argument("--dir", default=".tsfl-stack", help="state and logs")
    st.add_argument("--kafka", help="use this broker instead of starting one")
    st.add_argument("--database", help="database URL (default: a SQLite file in --dir)")
    st.add_argument("--grpc-port", type=int, default=50051)
    st.add_argument("--aggregators", type=int, default=1, metavar="N",
                    help="aggregator replicas (one consumer group: each folds its "
                         "partitions, the privacy stage merges the partial aggregates)")
    st.add_argument("--byzantine", type=int, default=1, metavar="N",
                    help="byzantine replicas (one consumer group: each judges the rounds "
                         "whose partition it owns)")
    st.set_defaults(func=cmd_stack)
