"""A vertical job embedded: every party simulated in this process, each seeing only its
own table and the messages relayed to it; the relay (the coordinator's role) counts what
crosses. PSI first (:func:`tsfl.vertical.align.align`), then split training
(:func:`tsfl.vertical.trainer.train_split`) on the aligned rows; metrics per epoch with
the horizontal runs' keys (round = epoch)."""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tsfl.config import JobSpec
from tsfl.runtime.embedded import RunResult
from tsfl.sdk.vertical import setup_of
from tsfl.sim.vertical import vertical_tables
from tsfl.vertical.align import align
from tsfl.vertical.psi import session_id
from tsfl.vertical.trainer import PartyColumns, train_split


class MeteredRelay:
    """The coordinator's view: message counts and bytes per kind (no contents kept)."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = defaultdict(int)
        self.count: dict[str, int] = defaultdict(int)

    def __call__(self, src: str, dst: str, kind: str, msg: bytes) -> bytes:
        self.bytes[kind] += len(msg)
        self.count[kind] += 1
        return msg


def job_salt(spec: JobSpec) -> bytes:
    """The per-job id-hash salt: ``vertical.psi.salt``, else derived from name and seed."""
    v = spec.vertical
    if v is not None and v.psi.salt:
        return bytes.fromhex(v.psi.salt)[:64]
    return hashlib.sha256(f"tsfl-psi-salt:{spec.name}:{spec.seed}".encode()).digest()


def run_vertical(spec: JobSpec, out_dir: Path,
                 on_round: Callable[[dict[str, Any]], None] | None = None) -> RunResult:
    """PSI then split training; ``status`` FAILED when the intersection is empty."""
    v = spec.vertical
    if v is None:
        raise ValueError("not a vertical job")
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = vertical_tables(spec)
    salt = job_salt(spec)
    relay = MeteredRelay()
    t0 = time.perf_counter()
    al = align(v.label_party, {n: t.ids for n, t in tables.parties.items()}, salt,
               mode=v.psi.mode, relay=relay, workers=v.psi.workers,
               max_items=v.psi.max_items)
    block: dict[str, Any] = {
        "label_party": v.label_party, "model": v.model, "parties": len(v.parties),
        "psi": {"mode": v.psi.mode, "wall_s": time.perf_counter() - t0,
                "set_sizes": {n: len(t.ids) for n, t in tables.parties.items()},
                "cardinalities": al.cardinalities, "bytes": al.bytes_moved,
                "intersection": len(al.ids.get(v.label_party, [])) or None},
        "cut_dp": v.cut_dp.model_dump() if v.cut_dp else None,
        "label_dp": v.label_dp.model_dump() if v.label_dp else None,
        "noise": v.noise}
    job_id = f"vertical-{spec.sha256()[:12]}"

    def result(metrics: list[dict[str, Any]], status: str, reason: str | None) -> RunResult:
        block["messages"] = dict(relay.count)
        block["bytes_by_kind"] = dict(relay.bytes)
        return RunResult(job_id, metrics, np.zeros(0, np.float32), status, reason,
                         time.perf_counter() - started, out_dir / "tsfl.db", spec, [],
                         vertical=block)

    if v.psi.mode == "cardinality":
        return result([], "COMPLETED", None)
    order = [i.decode() for i in al.ids[v.label_party]]
    label = tables.parties[v.label_party]
    assert label.y is not None
    test = np.array([i in tables.test_ids for i in order], bool)
    if test.all() or not test.any():
        return result([], "FAILED", f"the intersection ({len(order)} entities) leaves no "
                      "training or no test rows")
    parties = []
    for p in v.parties:
        t = tables.parties[p.name]
        if not p.indices:
            continue
        where = {i: r for r, i in enumerate(t.ids)}
        mine = [i.decode() for i in al.ids[p.name]]
        if mine != order:  # every party derived the same order from the same ids
            raise RuntimeError(f"party {p.name} disagrees on the aligned order")
        x = t.x[[where[i] for i in mine]]
        parties.append(PartyColumns(p.name, x[~test], x[test], local=p.name == v.label_party))
    where = {i: r for r, i in enumerate(label.ids)}
    y = label.y[[where[i] for i in order]]
    setup = setup_of(spec)  # the same setup a party process derives
    res = train_split(setup, parties, y[~test], y[test], tables.num_classes,
                      session=session_id(salt, "split", *[p.name for p in parties]),
                      label_name=v.label_party, relay=relay, on_epoch=on_round)
    block["train_rows"], block["test_rows"] = int((~test).sum()), int(test.sum())
    block["cut_dp_epsilon"] = res.epsilon
    return result(res.metrics, "COMPLETED", None)
