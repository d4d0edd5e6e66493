"""PSI between a leader (the label party) and any number of parties, through a relay.

The leader is the receiver of one two-party session (:mod:`.psi`) per party, each on the
ids still in the running, so it learns the chain X_L ∩ X_1, X_L ∩ X_1 ∩ X_2, …; the
parties learn only the final intersection (each RESULT is sent once the whole
intersection is known), the relay (the coordinator) only set sizes and message lengths.
In cardinality mode the leader learns |X_L ∩ X_i| for each party and nobody learns ids.

All parties then order the intersection the same way, by SHA-256(salt ‖ id), so batches
can be named by position without naming ids to the relay.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tsfl.vertical.group import encode_id
from tsfl.vertical.psi import Mode, PsiConfig, PsiReceiver, PsiSender, session_id

#: relay(src, dst, kind, message) -> the message as delivered
Relay = Callable[[str, str, str, bytes], bytes]


@dataclass
class RecordingRelay:
    """A passive coordinator: forwards each message and keeps what it saw."""

    log: list[tuple[str, str, str, bytes]] = field(default_factory=list)

    def __call__(self, src: str, dst: str, kind: str, msg: bytes) -> bytes:
        self.log.append((src, dst, kind, bytes(msg)))
        return msg

    @property
    def bytes_moved(self) -> int:
        return sum(len(m) for *_, m in self.log)


def common_order(salt: bytes, ids: Sequence[bytes]) -> list[bytes]:
    """The intersection in the order every party computes alike."""
    return sorted(ids, key=lambda i: hashlib.sha256(b"TSFL-order" + salt + i).digest())


@dataclass(frozen=True)
class Alignment:
    """Per party: its intersection ids in the common order (intersection mode), and the
    cardinalities the leader learned."""

    ids: dict[str, list[bytes]]
    cardinalities: dict[str, int]
    bytes_moved: int


def align(leader: str, sets: Mapping[str, Sequence[str | int | bytes]], salt: bytes, *,
          mode: Mode = "intersection", relay: Relay | None = None,
          workers: int = 1, max_items: int = 10_000_000) -> Alignment:
    """Run the PSI of ``leader`` with every other party in ``sets`` (simulated here in
    one process; each party's object sees only its own set and the relayed messages)."""
    if leader not in sets or len(sets) < 2:
        raise ValueError("need the leader and at least one other party")
    relay = relay or RecordingRelay()
    moved = 0
    current: list[str | int | bytes] = list(sets[leader])
    pending: list[tuple[str, PsiReceiver, PsiSender]] = []
    cards: dict[str, int] = {}
    for name, ids in sets.items():
        if name == leader:
            continue
        cfg = PsiConfig(salt, session_id(salt, leader, name), mode,
                        max_receiver_items=max_items, max_sender_items=max_items,
                        workers=workers)
        rcv = PsiReceiver(list(sets[leader]) if mode == "cardinality" else current, cfg)
        snd = PsiSender(ids, cfg)
        req = relay(leader, name, "request", rcv.request())
        resp = relay(name, leader, "response", snd.handle_request(req))
        moved += len(req) + len(resp)
        matches = rcv.handle_response(resp)
        cards[name] = rcv.cardinality or 0
        pending.append((name, rcv, snd))
        if mode == "intersection":
            current = list(matches)
            if not current:
                break
    final = {encode_id(i) for i in current} if mode == "intersection" else set()
    out: dict[str, list[bytes]] = {}
    for name, rcv, snd in pending:
        res = relay(leader, name, "result", rcv.result(final if mode == "intersection"
                                                       else None))
        moved += len(res)
        got = snd.handle_result(res)
        if mode == "intersection":
            out[name] = common_order(salt, got)
    if mode == "intersection":
        out[leader] = common_order(salt, sorted(final))
        for name in sets:
            out.setdefault(name, [])
    return Alignment(out, cards, moved)
