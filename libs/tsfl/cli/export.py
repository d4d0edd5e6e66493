"""``tsfl export JOB [--version N] --format safetensors|onnx|torchscript --out DIR``:
a released model as a standard file with its model card (:mod:`tsfl.interop`).

JOB is a ``tsfl run`` output directory (its ``tsfl.db``; the job in it), a SQLite file,
or a job id in the deployment's database (``--database URL``, else ``TSFL_DATABASE``,
else the local stack's, ``--stack-dir``/stack.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from rich.console import Console

err = Console(stderr=True)


def _source(args: argparse.Namespace) -> tuple[str, str | None, bool]:
    """(database URL, job id or None for the only job, whether the spec is the user's
    own — a local run's, whose model.factory may be imported)."""
    given = Path(args.job)
    if given.is_dir() and (given / "tsfl.db").is_file():
        return f"sqlite:///{given / 'tsfl.db'}", None, True
    if given.is_file() and given.suffix == ".db":
        return f"sqlite:///{given}", None, True
    url = args.database or os.environ.get("TSFL_DATABASE")
    if not url:
        try:
            state = json.loads((Path(args.stack_dir) / "stack.json").read_text())
            url = str(state["database"])
        except (OSError, ValueError, KeyError, TypeError):
            raise SystemExit("tsfl export: JOB is neither a run directory nor a database "
                             "file, and no --database (or TSFL_DATABASE, or a local stack) "
                             "says where the job is") from None
    return url, args.job, False


async def _export(args: argparse.Namespace) -> dict:
    from tsfl.interop.export import export_release
    from tsfl.interop.model_card import only_job, read_release
    from tsfl.storage.store import Store

    url, job_id, own = _source(args)
    store = await Store.open(url, migrate_schema=False)
    try:
        rel = await read_release(store, job_id or await only_job(store), args.version)
        return await export_release(store, rel, args.format, Path(args.out),
                                    allow_import=own)
    finally:
        await store.close()


def cmd_export(args: argparse.Namespace) -> int:
    from tsfl.interop.checkpoints import CheckpointError
    from tsfl.interop.model_card import ExportError

    try:
        card = asyncio.run(_export(args))
    except (ExportError, CheckpointError) as exc:
        err.print(f"[bold red]tsfl export:[/] {exc}", highlight=False)
        return 2
    acc = card["metrics"].get("test_accuracy")
    err.print(f"{card['job']} v{card['version']} (round {card['round']}) -> "
              f"{args.out}/{next(iter(card['files']))} + model_card.json, model_card.md"
              + (f"; test accuracy {acc:.4f}" if isinstance(acc, float) else ""),
              highlight=False)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a released model (safetensors, ONNX, "
                                      "TorchScript) with its model card")
    p.add_argument("job", help="a tsfl run output directory, a SQLite file, or a job id")
    p.add_argument("--version", type=int, help="model version (default: the newest)")
    p.add_argument("--format", required=True, choices=["safetensors", "onnx", "torchscript"])
    p.add_argument("--out", required=True, help="directory for the model and its card")
    p.add_argument("--database", help="the deployment's database URL (env TSFL_DATABASE)")
    p.add_argument("--stack-dir", default=".tsfl-stack",
                   help="the local stack's directory (its database, if none is given)")
    p.set_defaults(func=cmd_export)
