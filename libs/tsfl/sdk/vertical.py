"""A party of a vertical job as its own process: PSI, then its side of split training,
over any :class:`Mailbox` (the coordinator's relay:
:class:`tsfl.rpc.vertical_client.PartyClient`).

    box = PartyClient("coordinator:50051", job_id, "lab-a", enrolment_token, spec=spec)
    out = run_party(box.spec, "lab-a", my_table, box, salt=job_salt(box.spec),
                    num_classes=box.num_classes)

The label party (the PSI leader) also returns the per-epoch metrics; every party returns
its aligned intersection size and, with cut-layer DP, its ε. A mailbox with a
``report(kind, body)`` method (or the ``report`` argument) is told, for the coordinator's
record: each party's ``psi`` sizes (its set, the intersection), the label party's
``epoch`` metrics and the ``end`` (COMPLETED, or FAILED with the error of any party).
The computation is the one ``tsfl run`` simulates
(:func:`tsfl.runtime.vertical.run_vertical`): the same seed streams, batches and
messages, so a job over the relay equals the embedded run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from tsfl.config import JobSpec
from tsfl.sim.vertical import PartyTable
from tsfl.vertical import messages as m
from tsfl.vertical.align import common_order
from tsfl.vertical.group import encode_id
from tsfl.vertical.psi import PsiConfig, PsiError, PsiReceiver, PsiSender, session_id
from tsfl.vertical.split import cut_width
from tsfl.vertical.trainer import (
    EVAL_BATCH,
    PartyColumns,
    SplitSetup,
    batches,
    make_feature,
    make_label,
    scores,
)


class Mailbox(Protocol):
    def send(self, dst: str, kind: str, payload: bytes) -> None: ...

    def recv(self, src: str, kind: str, timeout: float = ...) -> bytes: ...


#: report(kind, body): what a party tells the coordinator (sizes, metrics, the end)
Reporter = Callable[[str, dict[str, Any]], None]


def setup_of(spec: JobSpec) -> SplitSetup:
    """The training setup a vertical spec names (shared with the embedded run)."""
    v, tr = spec.vertical, spec.training
    assert v is not None
    return SplitSetup(model=v.model, cut=v.cut_layer, bottom_hidden=tuple(v.bottom_hidden),
                      top_hidden=tuple(v.top_hidden), epochs=spec.rounds,
                      batch_size=tr.batch_size, lr=tr.lr, optimizer=tr.optimizer,
                      weight_decay=tr.weight_decay,
                      cut_dp=(v.cut_dp.clip, v.cut_dp.noise_multiplier, v.cut_dp.delta)
                      if v.cut_dp else None,
                      label_dp_epsilon=v.label_dp.epsilon if v.label_dp else None,
                      noise=v.noise, seed=spec.seed)


def _psi(spec: JobSpec, me: str, ids: list[str], salt: bytes, box: Mailbox,
         timeout: float) -> list[bytes]:
    v = spec.vertical
    assert v is not None
    leader = v.label_party

    def cfg(peer: str) -> PsiConfig:
        return PsiConfig(salt, session_id(salt, leader, peer), "intersection",
                         max_receiver_items=v.psi.max_items,
                         max_sender_items=v.psi.max_items, workers=v.psi.workers)

    if me != leader:
        snd = PsiSender(ids, cfg(me))
        req = box.recv(leader, "psi.request", timeout)
        if not req:
            raise PsiError("the leader's intersection is already empty")
        box.send(leader, "psi.response", snd.handle_request(req))
        return common_order(salt, snd.handle_result(box.recv(leader, "psi.result", timeout)))
    current: list[str | bytes] = list(ids)
    done = []
    for p in v.parties:
        if p.name == leader:
            continue
        if not current:
            box.send(p.name, "psi.request", b"")
            continue
        rcv = PsiReceiver(current, cfg(p.name))
        box.send(p.name, "psi.request", rcv.request())
        current = list(rcv.handle_response(box.recv(p.name, "psi.response", timeout)))
        done.append((p.name, rcv))
    final = {encode_id(i) for i in current}
    for name, rcv in done:
        box.send(name, "psi.result", rcv.result(final))
    return common_order(salt, sorted(final))


def run_party(spec: JobSpec, me: str, table: PartyTable, box: Mailbox, *, salt: bytes,
              test_ids: frozenset[str] | None = None, num_classes: int = 2,
              timeout: float = 120.0, report: Reporter | None = None) -> dict[str, Any]:
    """Run party ``me``'s side of the job. The label party needs ``test_ids`` (the
    entities it holds out) and ``num_classes``; it announces the held-out positions.
    ``report`` (default: the mailbox's ``report``, if any) is told the sizes, the
    metrics and the end (see the module docstring)."""
    v = spec.vertical
    if v is None or me not in {p.name for p in v.parties}:
        raise ValueError(f"{me!r} is not a party of this vertical job")
    tell = report or getattr(box, "report", None)
    try:
        out = _run_party(spec, me, table, box, salt, test_ids, num_classes, timeout, tell)
    except Exception as exc:
        if tell is not None:
            with contextlib.suppress(Exception):  # the coordinator may be gone
                tell("end", {"status": "FAILED", "reason": f"{type(exc).__name__}: "
                                                           f"{str(exc)[:400]}"})
        raise
    if tell is not None and me == v.label_party:
        tell("end", {"status": "COMPLETED"})
    return out


def _run_party(spec: JobSpec, me: str, table: PartyTable, box: Mailbox, salt: bytes,
               test_ids: frozenset[str] | None, num_classes: int, timeout: float,
               tell: Reporter | None) -> dict[str, Any]:
    v = spec.vertical
    assert v is not None
    aligned = [i.decode() for i in _psi(spec, me, table.ids, salt, box, timeout)]
    if tell is not None:
        tell("psi", {"set_size": len(table.ids), "intersection": len(aligned)})
    setup, leader = setup_of(spec), v.label_party
    feats = [p for p in v.parties if p.indices]
    k = next((i for i, p in enumerate(feats) if p.name == me), None)
    session = session_id(salt, "split", *[p.name for p in feats])
    where = {i: r for r, i in enumerate(table.ids)}
    rows = np.array([where[i] for i in aligned], dtype=np.int64)
    width = cut_width(setup.model, num_classes, setup.cut)
    if me != leader:
        bits = box.recv(leader, "split.test", timeout)
        if len(bits) != -(-len(aligned) // 8):
            raise m.MessageError("held-out bitmap of the wrong length")
        test = np.unpackbits(np.frombuffer(bits, np.uint8))[:len(aligned)].astype(bool)
        x = table.x[rows]
        assert k is not None
        fp = make_feature(setup, k, PartyColumns(me, x[~test], x[test]), num_classes)
        for epoch in range(1, setup.epochs + 1):
            for b, batch in enumerate(batches(setup, int((~test).sum()), epoch)):
                box.send(leader, "activations", m.encode(
                    m.ACTIVATIONS, session, k, epoch, b, fp.activations(batch, True)))
                fp.backward(m.decode(box.recv(leader, "gradients", timeout), m.Expect(
                    m.GRADIENTS, session, k, epoch, b, len(batch), width)))
            box.send(leader, "activations", m.encode(
                m.ACTIVATIONS, session, k, epoch, EVAL_BATCH, fp.test_activations()))
            eps = fp.dp.end_epoch() if fp.dp is not None else None
        return {"party": me, "intersection": len(aligned), "epsilon": eps}
    if table.y is None or test_ids is None:
        raise ValueError("the label party needs its labels and its held-out ids")
    test = np.array([i in test_ids for i in aligned], bool)
    for p in feats:
        if p.name != leader:
            box.send(p.name, "split.test", np.packbits(test).tobytes())
    y = table.y[rows]
    label = make_label(setup, len(feats), y[~test], num_classes)
    own = (make_feature(setup, k, PartyColumns(me, table.x[rows][~test],
                                               table.x[rows][test], local=True), num_classes)
           if k is not None else None)
    metrics, t0, n = [], time.perf_counter(), int((~test).sum())

    def gather(epoch: int, b: int, count: int, counter: list[int],
               mine: Any) -> list[np.ndarray]:
        parts = []
        for j, p in enumerate(feats):
            if p.name == me:
                parts.append(mine())
                continue
            msg = box.recv(p.name, "activations", timeout)
            counter[0] += len(msg)
            parts.append(m.decode(msg, m.Expect(m.ACTIVATIONS, session, j, epoch, b, count,
                                                width)))
        return parts

    for epoch in range(1, setup.epochs + 1):
        up, down, losses = [0], [0], []
        for b, batch in enumerate(batches(setup, n, epoch)):
            parts = gather(epoch, b, len(batch), up,
                           lambda batch=batch: own.activations(batch, True))  # type: ignore[union-attr]
            grads, loss = label.step(batch, parts)
            losses.append(loss * len(batch))
            for j, (p, g) in enumerate(zip(feats, grads, strict=True)):
                if p.name == me:
                    own.backward(g)  # type: ignore[union-attr]
                    continue
                msg = m.encode(m.GRADIENTS, session, j, epoch, b, g)
                down[0] += len(msg)
                box.send(p.name, "gradients", msg)
        parts = gather(epoch, EVAL_BATCH, int(test.sum()), up,
                       lambda: own.test_activations())  # type: ignore[union-attr]
        acc, test_loss = scores(label.predict(parts), y[test])
        metrics.append({"round": epoch, "test_accuracy": acc, "test_loss": test_loss,
                        "train_loss": float(sum(losses) / n), "clients": len(feats),
                        "rejected": 0, "dropped": 0, "bytes_up": up[0],
                        "bytes_down": down[0], "model_version": epoch,
                        "wall_s": time.perf_counter() - t0})
        if tell is not None:
            tell("epoch", {key: val for key, val in metrics[-1].items() if key not in
                           ("rejected", "dropped", "model_version")})
    return {"party": me, "intersection": len(aligned), "metrics": metrics}
