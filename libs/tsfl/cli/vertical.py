"""``tsfl vertical``: a vertical job's party against a coordinator, and simulated tables.

    tsfl vertical party --coordinator HOST:PORT --job JOB_ID --token ENROL --party NAME
                        --data NAME.npz [--spec JOB.yaml] [--ca CA.pem] [--timeout S]
    tsfl vertical tables JOB.yaml --out DIR     # the simulation's tables, one file a party

A party file is an ``.npz`` (no pickles): ``ids`` (strings, one per row), ``x`` (float,
rows × the party's columns, in the spec's order), and for the label party ``y`` (integer
labels) and ``test`` (booleans: the rows it holds out for evaluation). ``--spec`` is the
job spec this party agreed to: the coordinator's must match it (:func:`same_terms`).
Prints the party's result as JSON (the label party's has the per-epoch metrics).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console

if TYPE_CHECKING:
    from tsfl.sim.vertical import PartyTable

err = Console(stderr=True)
MAX_FILE_BYTES = 1 << 30


def read_party_file(path: Path, name: str, columns: int, label: bool, max_rows: int
                    ) -> tuple[PartyTable, frozenset[str] | None]:
    """Party ``name``'s table and held-out ids (label party) from ``path``, checked:
    sizes, types, the column count, unique ids."""
    from tsfl.sim.vertical import PartyTable

    if path.stat().st_size > MAX_FILE_BYTES:
        raise SystemExit(f"tsfl vertical: {path} is over {MAX_FILE_BYTES >> 20} MiB")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in ("ids", "x", "y", "test") if k in data.files}
    ids, x = arrays.get("ids"), arrays.get("x")
    if ids is None or x is None or ids.dtype.kind != "U" or ids.ndim != 1:
        raise SystemExit(f"tsfl vertical: {path}: want 'ids' (strings) and 'x'")
    if not 0 < len(ids) <= max_rows or len(set(ids.tolist())) != len(ids):
        raise SystemExit(f"tsfl vertical: {path}: 1..{max_rows} unique ids")
    if x.ndim != 2 or x.shape != (len(ids), columns) or x.dtype.kind != "f":
        raise SystemExit(f"tsfl vertical: {path}: 'x' must be float {len(ids)} × {columns}")
    y = test = None
    if label:
        y, test = arrays.get("y"), arrays.get("test")
        if y is None or test is None or y.shape != ids.shape or test.shape != ids.shape \
                or y.dtype.kind not in "iu" or test.dtype != bool:
            raise SystemExit(f"tsfl vertical: {path}: the label party's file needs 'y' "
                             "(integers) and 'test' (booleans), one per id")
    table = PartyTable(name, ids.tolist(), np.ascontiguousarray(x, np.float32),
                       None if y is None else y.astype(np.int64))
    held_out = frozenset(ids[test].tolist()) if test is not None else None
    return table, held_out


def cmd_party(args: argparse.Namespace) -> int:
    import grpc

    from tsfl.config import ConfigError, load_job
    from tsfl.errors import TsflError
    from tsfl.rpc.vertical_client import PartyClient
    from tsfl.runtime.vertical import job_salt
    from tsfl.sdk.vertical import run_party

    try:
        mine = load_job(Path(args.spec)) if args.spec else None
    except ConfigError as exc:
        raise SystemExit(f"tsfl vertical: invalid job spec: {'; '.join(exc.problems)}") from None
    creds = (grpc.ssl_channel_credentials(root_certificates=Path(args.ca).read_bytes())
             if args.ca else None)
    try:
        with PartyClient(args.coordinator, args.job, args.party, args.token, spec=mine,
                         credentials=creds) as box:
            v = box.spec.vertical
            assert v is not None
            me = next((p for p in v.parties if p.name == args.party), None)
            assert me is not None  # the coordinator enrolled it
            table, held_out = read_party_file(Path(args.data), me.name, len(me.indices),
                                              me.name == v.label_party, v.psi.max_items)
            out = run_party(box.spec, args.party, table, box, salt=job_salt(box.spec),
                            test_ids=held_out, num_classes=box.num_classes,
                            timeout=args.timeout)
    except grpc.RpcError as exc:
        err.print(f"tsfl vertical: {exc.code().name}: {exc.details()}", highlight=False)
        return 1
    except TsflError as exc:
        err.print(f"tsfl vertical: {exc}", highlight=False)
        return 1
    json.dump(out, sys.stdout, default=float)
    sys.stdout.write("\n")
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    from tsfl.config import ConfigError, load_job
    from tsfl.sim.vertical import vertical_tables

    try:
        spec = load_job(Path(args.job))
    except ConfigError as exc:
        raise SystemExit(f"tsfl vertical: invalid job spec: {'; '.join(exc.problems)}") from None
    if spec.vertical is None:
        raise SystemExit("tsfl vertical: the job has no vertical: section")
    tables = vertical_tables(spec)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, t in tables.parties.items():
        arrays: dict[str, Any] = {"ids": np.array(t.ids), "x": t.x}
        if t.y is not None:
            arrays["y"] = t.y
            arrays["test"] = np.array([i in tables.test_ids for i in t.ids], bool)
        np.savez(folder / f"{name}.npz", **arrays)
    err.print(f"{len(tables.parties)} party files in {folder}/<party>.npz", highlight=False)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vertical", help="a vertical job's party against a coordinator")
    vsub = p.add_subparsers(dest="vertical_cmd", required=True)
    party = vsub.add_parser("party", help="run one party of a vertical job")
    party.add_argument("--coordinator", required=True, help="HOST:PORT")
    party.add_argument("--job", required=True, help="the job id")
    party.add_argument("--token", required=True, help="the job's enrolment token")
    party.add_argument("--party", required=True, help="this party's name in the spec")
    party.add_argument("--data", required=True, help="this party's table (.npz)")
    party.add_argument("--spec", help="the job spec this party agreed to (checked)")
    party.add_argument("--ca", help="the coordinator's CA certificate (PEM): TLS")
    party.add_argument("--timeout", type=float, default=300.0,
                       help="the longest wait for one message (s)")
    party.set_defaults(func=cmd_party)
    tables = vsub.add_parser("tables", help="write a vertical job's simulated party tables")
    tables.add_argument("job", help="a vertical job spec")
    tables.add_argument("--out", required=True, help="directory for <party>.npz")
    tables.set_defaults(func=cmd_tables)
