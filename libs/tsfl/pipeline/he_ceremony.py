"""The server side of a threshold-HE key ceremony among real silos: the coordinator relays
the ceremony's steps (:mod:`tsfl.he.threshold.ceremony`) and keeps the public result.

A job submitted with ``crypto.he.keying: threshold`` and no key id gets its key here,
once its ``clients.count`` devices have enrolled and before round 1: those devices are
the participants (every client is a silo holding a share). Three steps, each a signed
message from every participant, each answered when all have sent theirs:

- **advertise** → every advertisement;
- **deal** → for each silo, every participant's deal in its per-recipient form (the public
  share, the share sealed to that silo, the digests the dealer signed);
- **confirm** (each silo's signature on the key id it derived) → every confirmation.

The relay checks each message's certificate (one of the job's authorities, for the
calling device) and signature before taking it, to refuse junk early and name its
sender; the silos check everything again. From the transcript it computes the collective
public key (:func:`~tsfl.he.threshold.ceremony.public_key`) and holds that only: the
sealed shares are opaque to it (AES-GCM under keys of the silos' X25519 pairs). A
confirmation of any other key id fails the ceremony (a silo was shown other messages).

A silo that finds the transcript wrong aborts (:meth:`CeremonyRelay.abort`, with its
reason); a step not complete ``timeout_s`` after it began fails the ceremony; either way
everyone waiting hears the reason, and the job fails with it. State lives in memory: a
coordinator restart runs a fresh ceremony (a new ``attempt``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import Any

from tsfl.he.errors import HeError
from tsfl.he.threshold import ceremony
from tsfl.he.threshold.keys import CollectivePublicKey, poly_from
from tsfl.he.threshold.params import ThresholdParams

STEPS = ("advertise", "deal", "confirm")


class CeremonyRelay:
    """One job's key ceremony, as the coordinator relays it."""

    def __init__(self, label: str, params: ThresholdParams, participants: Iterable[str],
                 authorities: Iterable[bytes], timeout_s: float):
        self.label = label
        self.params = params
        self.ids = sorted(set(participants))
        if len(self.ids) != params.parties:
            raise HeError("key", f"{len(self.ids)} participants, the job's parameters are "
                                 f"for {params.parties} silos")
        self.authorities = tuple(authorities)
        self.timeout_s = timeout_s
        self.attempt = os.urandom(8).hex()
        self.messages: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in STEPS}
        self.public: CollectivePublicKey | None = None
        self.failure: str | None = None
        self._crs: bytes | None = None
        self._done = {s: asyncio.Event() for s in STEPS}
        self._timer: asyncio.TimerHandle | None = None
        self._step = 0  # the step in progress (its index)

    # -- what devices see --------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What a silo needs to take part (and the state, for the status call)."""
        state = ("failed" if self.failure else "done" if self.public is not None
                 and self._done["confirm"].is_set() else "running")
        return {"attempt": self.attempt, "label": self.label, "state": state,
                "params": self.params.to_json(), "participants": list(self.ids),
                "authorities": list(self.authorities),
                "key_id": self.public.key_id if self.public is not None else None}

    async def wait(self) -> CollectivePublicKey:
        """The collective public key once every silo confirmed it; :class:`HeError`
        ``aborted`` with the reason when the ceremony failed."""
        self.start()
        await self._done["confirm"].wait()
        if self.failure is not None or self.public is None:
            raise HeError("aborted", self.failure or "key ceremony failed")
        return self.public

    # -- progress ----------------------------------------------------------------------------
    def start(self) -> None:
        """Arm the first step's timer (the silos find the ceremony by polling)."""
        if self._timer is None and not self._done["confirm"].is_set():
            self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        step = STEPS[self._step]
        self._timer = asyncio.get_running_loop().call_later(
            self.timeout_s, lambda: self._expire(step))

    def _expire(self, step: str) -> None:
        if self._done[step].is_set():
            return
        missing = sorted(set(self.ids) - set(self.messages[step]))
        self.fail(f"key ceremony timed out in its {step} step (waiting for "
                  f"{', '.join(missing)})")

    def fail(self, reason: str) -> None:
        self.failure = self.failure or reason
        if self._timer is not None:
            self._timer.cancel()
        for event in self._done.values():
            event.set()

    def cancel(self) -> None:
        self.fail("key ceremony cancelled")

    def abort(self, client_id: str, code: str, message: str) -> None:
        """A silo found the transcript wrong (or cannot go on): the ceremony fails with
        its reason."""
        if client_id in self.ids:
            self.fail(f"{client_id} aborted the key ceremony ({code}): {message}")

    # -- checks ------------------------------------------------------------------------------
    def _check(self, client_id: str, step: str, msg: Any) -> None:
        if not isinstance(msg, dict) or msg.get("id") != client_id:
            raise HeError("malformed", "the message names another device")
        if step == "advertise":
            if not (isinstance(msg.get("dh"), bytes) and len(msg["dh"]) == 32
                    and isinstance(msg.get("nonce"), bytes) and len(msg["nonce"]) == 32):
                raise HeError("malformed", "an advertisement holds a 32-byte key and nonce")
            if msg.get("x") != self.ids.index(client_id) + 1:
                raise HeError("malformed", f"{client_id} is point "
                                           f"{self.ids.index(client_id) + 1}, not "
                                           f"{msg.get('x')!r}")
            ceremony.check_signed(msg, ceremony.ADVERTISE,
                                  ceremony.advert_body(self.label, msg), self.authorities,
                                  self.ids)
        elif step == "deal":
            assert self._crs is not None
            sealed, p0 = msg.get("shares"), msg.get("p0")
            size = ceremony.sealed_share_bytes(self.params)
            if not isinstance(p0, bytes) or not isinstance(sealed, dict) or set(
                    sealed) != set(self.ids) - {client_id} or not all(
                    isinstance(b, bytes) and len(b) == size for b in sealed.values()):
                raise HeError("malformed", "a deal holds a public share and one sealed "
                                           f"share of {size} bytes for every other silo")
            poly_from(p0, self.params)
            ceremony.check_signed(msg, ceremony.DEAL, ceremony.deal_body(
                self.label, self._crs, client_id, p0, ceremony.deal_digests(msg)),
                self.authorities, self.ids)
        else:
            assert self.public is not None
            if not isinstance(msg.get("k"), str):
                raise HeError("malformed", "a confirmation names a key id")
            ceremony.check_signed(msg, ceremony.CONFIRM, [self.label, msg["k"]],
                                  self.authorities, self.ids)

    # -- steps -------------------------------------------------------------------------------
    async def submit(self, client_id: str, step: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Take one silo's message for ``step``; answer once every silo sent its own."""
        if step not in STEPS:
            raise HeError("malformed", f"unknown ceremony step {step!r}")
        if client_id not in self.ids:
            raise HeError("not_participant", f"{client_id!r} is not a participant of this "
                                             "key ceremony")
        if self.failure is None:
            index = STEPS.index(step)
            held = self.messages[step].get(client_id)
            if held is not None:
                if held != msg:
                    raise HeError("malformed", f"{client_id} already sent another {step} "
                                               "message")
            elif index != self._step:
                raise HeError("wrong_step", f"the key ceremony is in its {STEPS[self._step]} "
                                            f"step, not {step}")
            else:
                try:
                    self._check(client_id, step, msg)
                except HeError as exc:  # the ceremony cannot complete without this silo
                    self.fail(f"{client_id}'s {step} message was refused: {exc}")
                    raise
                self.messages[step][client_id] = msg
                self._advance(step)
        await self._done[step].wait()
        if self.failure is not None:
            raise HeError("aborted", self.failure)
        return self._reply(client_id, step)

    def _advance(self, step: str) -> None:
        if set(self.messages[step]) != set(self.ids):
            return
        if step == "advertise":
            self._crs = ceremony.crs_seed(self.label, self.messages[step], self.ids)
        elif step == "deal":
            self.public = ceremony.public_key(self.label, self.params, self.ids,
                                              self.messages["advertise"],
                                              self.messages["deal"], self.authorities)
        else:
            assert self.public is not None
            other = sorted(c for c, m in self.messages[step].items()
                           if m["k"] != self.public.key_id)
            if other:
                self.fail(f"key ceremony: {', '.join(other)} derived another key than the "
                          "transcript's")
                return
        self._done[step].set()
        if step == "confirm":
            if self._timer is not None:
                self._timer.cancel()
            self.messages["deal"] = {}  # every silo had its deals: keep the public part
        else:
            self._step += 1
            self._arm()

    def _reply(self, client_id: str, step: str) -> dict[str, Any]:
        held = self.messages[step]
        if step == "deal":
            return {"deals": [ceremony.for_recipient(held[i], client_id) for i in self.ids]}
        key = "adverts" if step == "advertise" else "confirms"
        return {key: [held[i] for i in self.ids]}
