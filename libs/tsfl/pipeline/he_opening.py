"""The server side of opening a threshold-HE sum: the coordinator relays the silos' two
opening steps for the current model (:mod:`tsfl.he.threshold.opening`) and decides
nothing the silos cannot check.

- **sketch**: every silo's signed message (its Shamir point, and a sketch of its own
  section when it contributed). The step completes when every contributor of the sum has
  sent its sketch and at least t silos have answered; the t answering silos with the
  smallest points become the decryptors T. Everyone waiting gets all sketches and T.
- **partial**: each silo of T sends its masked partial decryption; the others wait. The
  step completes when all of T have sent; everyone gets the partials.

A step that is not complete ``stage_timeout_s`` after it began fails the opening (a silo
of T or a contributor vanished): everyone waiting gets the reason. The server checks each
message's certificate and signature (to refuse junk early and audit it); the silos check
everything again. It holds masked partials only: uniform noise without the silos' output
key. State lives in memory; a restart makes the silos open the model again.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from typing import Any

from tsfl.he.errors import HeError
from tsfl.he.threshold.keys import JobKey
from tsfl.he.threshold.opening import PARTIAL, SKETCH, SKETCHES, signed_body
from tsfl.he.threshold.sections import SumView, parse_sum
from tsfl.identity import IdentityCertificate, IdentityError, verify, verify_certificate

STAGES = ("sketch", "partial")


class OpeningStages:
    """One model version's opening."""

    def __init__(self, job_id: str, version: int, key: JobKey, size: int, sealed: bytes,
                 authorities: Iterable[bytes], timeout_s: float):
        self.job_id = job_id
        self.version = version
        self.key = key
        self.view: SumView = parse_sum(sealed, key, size)
        if self.view.job_id != job_id:
            raise HeError("opening", "the model's sum names another job")
        self.authorities = tuple(authorities)
        self.timeout_s = timeout_s
        self.contributors = {str(e.get("id")) for e in self.view.manifest}
        self.sketches: dict[str, dict[str, Any]] = {}
        self.points: dict[str, int] = {}
        self.decryptors: list[str] | None = None
        self.partials: dict[str, dict[str, Any]] = {}
        self.joined: set[str] = set()  # silos that asked to take part
        self.delivered: set[str] = set()  # silos that got the partial decryptions
        self.failure: str | None = None
        self._done = {s: asyncio.Event() for s in STAGES}
        self._timer: asyncio.TimerHandle | None = None

    @property
    def opened(self) -> bool:
        """Every decryptor sent its partial: the silos can combine the sum."""
        return self.failure is None and self._done["partial"].is_set()

    # -- checks ------------------------------------------------------------------------------
    def _verify(self, client_id: str, msg: Any, purpose: bytes, value: Any) -> int:
        try:
            if not isinstance(msg, dict) or msg.get("id") != client_id:
                raise HeError("opening", "the message names another device")
            x = msg.get("x")
            if not isinstance(x, int) or not 1 <= x <= self.key.params.parties:
                raise HeError("opening", f"Shamir point {x!r} is out of range")
            cert = IdentityCertificate.from_wire(msg.get("c"))
            verify_certificate(cert, self.authorities, client_id)
            signature = msg.get("s")
            if not isinstance(signature, bytes):
                raise HeError("opening", "the message is not signed")
            verify(cert, purpose, signed_body(self.view, x, value), signature)
        except IdentityError as exc:
            raise HeError("identity", str(exc)) from None
        return x

    def _check_sketch(self, client_id: str, msg: Any) -> None:
        value = msg.get("v") if isinstance(msg, dict) else None
        if client_id in self.contributors:
            k = self.key.params.limbs
            if not (isinstance(value, list) and len(value) == SKETCHES and all(
                    isinstance(row, list) and len(row) == k and all(
                        isinstance(v, int) and 0 <= v < p
                        for v, p in zip(row, self.key.params.primes, strict=True))
                    for row in value)):
                raise HeError("opening", "a contributor's sketch is malformed")
        elif value is not None:
            raise HeError("opening", "a silo whose section is not in the sum sent a sketch")
        x = self._verify(client_id, msg, SKETCH, value)
        if x in self.points.values() and self.points.get(client_id) != x:
            raise HeError("opening", f"Shamir point {x} is already taken")
        self.points[client_id] = x

    # -- progress ----------------------------------------------------------------------------
    def _arm(self, stage: str) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.timeout_s, lambda: self._expire(stage))

    def _expire(self, stage: str) -> None:
        if self._done[stage].is_set():
            return
        missing = (sorted(self.contributors - set(self.sketches)) if stage == "sketch"
                   else sorted(set(self.decryptors or []) - set(self.partials)))
        self._fail(f"opening of model v{self.version} timed out in its {stage} step "
                   f"(waiting for {', '.join(missing) or 'a threshold of silos'})")

    def _fail(self, reason: str) -> None:
        self.failure = self.failure or reason
        for event in self._done.values():
            event.set()

    def cancel(self) -> None:
        if self._timer:
            self._timer.cancel()
        self._fail("opening cancelled")

    def _advance(self) -> None:
        if self.decryptors is None:
            t = self.key.params.threshold
            if self.contributors <= set(self.sketches) and len(self.sketches) >= t:
                order = sorted(self.sketches, key=lambda c: self.points[c])
                self.decryptors = order[:t]
                self._restart_timer("partial")
                self._done["sketch"].set()
        elif set(self.decryptors) <= set(self.partials):
            if self._timer:
                self._timer.cancel()
            self._done["partial"].set()

    def _restart_timer(self, stage: str) -> None:
        if self._timer:
            self._timer.cancel()
        self._timer = None
        self._arm(stage)

    async def submit(self, client_id: str, stage: str, payload: dict[str, Any]
                     ) -> dict[str, Any]:
        """Accept one silo's message for ``stage``; return once the step is complete."""
        if stage not in STAGES:
            raise HeError("malformed", f"unknown opening step {stage!r}")
        if self.failure is None:
            self._arm(stage)
            if stage == "sketch":
                self.joined.add(client_id)
            if stage == "sketch" and self.decryptors is None:
                self._check_sketch(client_id, payload)
                self.sketches[client_id] = payload
            elif stage == "partial" and payload:
                msg = payload.get("partial")
                if self.decryptors is None or client_id not in self.decryptors:
                    raise HeError("opening", f"{client_id!r} is not a decryptor")
                if not isinstance(msg, dict):
                    raise HeError("opening", "a partial decryption is a map")
                blob = msg.get("d")
                if not isinstance(blob, bytes):
                    raise HeError("opening", "a partial decryption needs its bytes")
                if msg.get("v") != hashlib.sha256(blob).digest():
                    raise HeError("opening", "the partial's digest does not match it")
                self._verify(client_id, msg, PARTIAL, msg["v"])
                self.partials[client_id] = msg
            self._advance()
        await self._done[stage].wait()
        if self.failure is not None:
            raise HeError("aborted", self.failure)
        board: dict[str, Any] = {"sketches": self.sketches, "decryptors": self.decryptors}
        if stage == "partial":
            board["partials"] = self.partials
            self.delivered.add(client_id)
        return board
