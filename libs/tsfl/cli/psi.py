"""``tsfl psi``: private set intersection between parties, simulated in one process.

    tsfl psi --party bank=bank.txt --party insurer=ins.txt [--party ...]
             [--leader bank] [--mode intersection|cardinality] [--salt HEX] [--out DIR]
    tsfl psi JOB.yaml                 # the PSI step of a vertical job (its parties' ids)

An id file has one id per line (UTF-8, at most 256 bytes each; blank lines skipped). The
leader (default: the first party) is the receiver of every two-party session
(:mod:`tsfl.vertical.align`); each party object sees only its own file and the relayed
messages. Prints the set sizes, the cardinalities, the bytes relayed and the time;
``--out`` writes each party's view of the intersection (``<party>.ids``, the common order).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import cast

from rich.console import Console

err = Console(stderr=True)
out = Console()
MAX_FILE_BYTES = 1 << 30


def _read_ids(path: Path, limit: int) -> list[str]:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise SystemExit(f"tsfl psi: {path} is over {MAX_FILE_BYTES >> 20} MiB")
    ids = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            item = line.strip()
            if not item:
                continue
            if len(item.encode()) > 256:
                raise SystemExit(f"tsfl psi: {path}:{n}: id over 256 bytes")
            ids.append(item)
            if len(ids) > limit:
                raise SystemExit(f"tsfl psi: {path}: more than {limit} ids")
    if len(set(ids)) != len(ids):
        raise SystemExit(f"tsfl psi: {path}: duplicate ids")
    if not ids:
        raise SystemExit(f"tsfl psi: {path}: no ids")
    return ids


def _job_sets(args: argparse.Namespace) -> tuple[str, dict[str, list[str]], bytes, str]:
    from tsfl.config import ConfigError, load_job
    from tsfl.runtime.vertical import job_salt
    from tsfl.sim.vertical import vertical_tables

    try:
        spec = load_job(Path(args.job))
    except ConfigError as exc:
        raise SystemExit(f"tsfl psi: invalid job spec: {'; '.join(exc.problems)}") from None
    if spec.vertical is None:
        raise SystemExit("tsfl psi: the job has no vertical: section")
    tables = vertical_tables(spec)
    sets = {n: t.ids for n, t in tables.parties.items()}
    return spec.vertical.label_party, sets, job_salt(spec), args.mode or spec.vertical.psi.mode


def cmd_psi(args: argparse.Namespace) -> int:
    from tsfl.vertical.align import RecordingRelay, align
    from tsfl.vertical.psi import Mode

    if args.job:
        leader, sets, salt, mode = _job_sets(args)
    else:
        if len(args.party or []) < 2:
            raise SystemExit("tsfl psi: give a vertical JOB.yaml or at least two "
                             "--party NAME=FILE")
        sets = {}
        for item in args.party:
            name, sep, file = item.partition("=")
            if not sep or not name or name in sets:
                raise SystemExit(f"tsfl psi: --party {item!r}: want a new NAME=FILE")
            sets[name] = _read_ids(Path(file), args.max_items)
        leader = args.leader or next(iter(sets))
        if leader not in sets:
            raise SystemExit(f"tsfl psi: --leader {leader!r} is not a party")
        try:
            salt = bytes.fromhex(args.salt) if args.salt else os.urandom(32)
        except ValueError:
            raise SystemExit("tsfl psi: --salt must be hex") from None
        if not 16 <= len(salt) <= 64:
            raise SystemExit("tsfl psi: --salt must be 16..64 bytes")
        mode = args.mode or "intersection"
    relay = RecordingRelay()
    t0 = time.perf_counter()
    al = align(leader, sets, salt, mode=cast(Mode, mode), relay=relay, workers=args.workers,
               max_items=args.max_items)
    wall = time.perf_counter() - t0
    sizes = ", ".join(f"{n} {len(s)}" for n, s in sets.items())
    err.print(f"psi ({mode}, leader {leader}): sets {sizes}; {len(relay.log)} messages, "
              f"{relay.bytes_moved} bytes relayed, {wall:.2f} s", highlight=False)
    for name, card in al.cardinalities.items():
        err.print(f"  |{leader} ∩ {name}| = {card}" if mode == "cardinality" else
                  f"  {leader} ∩ … ∩ {name}: {card}", highlight=False)
    if mode == "intersection":
        out.print(f"intersection: {len(al.ids[leader])}", highlight=False)
        if args.out:
            folder = Path(args.out)
            folder.mkdir(parents=True, exist_ok=True)
            for name, ids in al.ids.items():
                (folder / f"{name}.ids").write_text(
                    "".join(i.decode() + "\n" for i in ids), encoding="utf-8")
            err.print(f"each party's view in {folder}/<party>.ids", highlight=False)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("psi", help="private set intersection (ECDH) between parties")
    p.add_argument("job", nargs="?", help="a vertical job spec (its parties' ids)")
    p.add_argument("--party", action="append", metavar="NAME=FILE",
                   help="a party and its id file (one id a line); repeat")
    p.add_argument("--leader", help="the party that learns the intersection first")
    p.add_argument("--mode", choices=["intersection", "cardinality"])
    p.add_argument("--salt", help="hex per-job salt (default: random)")
    p.add_argument("--workers", type=int, default=1, choices=range(1, 17), metavar="1..16")
    p.add_argument("--max-items", type=int, default=10_000_000)
    p.add_argument("--out", help="directory for each party's intersection (<party>.ids)")
    p.set_defaults(func=cmd_psi)
