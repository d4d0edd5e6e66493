"""Commit before reveal, server side: a threshold-HE round's board of section commitments.

Each contributor of the round sends a signed commitment to its section (its digest,
:meth:`~tsfl.he.threshold.opening.OpeningSilo.commit_message`) and waits; the board
**closes** once every device of the cohort that has not declined committed — or
``timeout_s`` after the first commitment, without those that did not (the simulation,
which knows who vanished, narrows the expected set: :meth:`CommitBoard.expect`) — and
answers everyone with the full list. Only then does a device upload its section, and
the coordinator takes a section only from a device on the list, with the digest it
committed. The silos check the same at the opening (the server's word is not needed):
see :mod:`tsfl.he.threshold.opening`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from tsfl.he.errors import HeError
from tsfl.he.threshold.opening import COMMIT, commit_body
from tsfl.identity import IdentityCertificate, IdentityError, verify, verify_certificate


class CommitBoard:
    """One round's commitments."""

    def __init__(self, job_id: str, round_number: int, key_id: str, cohort: Iterable[str],
                 authorities: Iterable[bytes], timeout_s: float):
        self.job_id = job_id
        self.round = round_number
        self.key_id = key_id
        self.expected = set(cohort)
        self.authorities = tuple(authorities)
        self.timeout_s = timeout_s
        self.commits: dict[str, dict[str, Any]] = {}
        self._closed = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def digest(self, client_id: str) -> bytes | None:
        """The digest ``client_id`` committed to, once the board closed."""
        msg = self.commits.get(client_id) if self.closed else None
        return bytes(msg["d"]) if msg is not None else None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._closed.set()

    def expect(self, devices: Iterable[str]) -> None:
        """Only these devices will commit (simulation: the others vanished)."""
        self.expected &= set(devices)
        self._maybe_close()

    def withdraw(self, client_id: str) -> None:
        """A device that declined the round: the board does not wait for it."""
        self.expected.discard(client_id)
        self._maybe_close()

    def _maybe_close(self) -> None:
        if not self.closed and self.expected <= set(self.commits):
            self.close()

    def _check(self, client_id: str, msg: Any) -> None:
        try:
            if not isinstance(msg, dict) or msg.get("id") != client_id:
                raise HeError("malformed", "the commitment names another device")
            digest = msg.get("d")
            if not isinstance(digest, bytes) or len(digest) != 32:
                raise HeError("malformed", "a commitment is a 32-byte section digest")
            cert = IdentityCertificate.from_wire(msg.get("c"))
            verify_certificate(cert, self.authorities, client_id)
            signature = msg.get("s")
            if not isinstance(signature, bytes):
                raise HeError("malformed", "a commitment must be signed")
            verify(cert, COMMIT, commit_body(self.job_id, self.round, self.key_id, digest),
                   signature)
        except IdentityError as exc:
            raise HeError("identity", f"commitment: {exc}") from None

    async def submit(self, client_id: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Take ``client_id``'s commitment; answer with every commitment once the board
        closed. :class:`HeError` for a device outside the cohort, a late or changed one."""
        held = self.commits.get(client_id)
        if held is not None and held != msg:
            raise HeError("malformed", f"{client_id} already committed to another section")
        if held is None:
            if client_id not in self.expected:
                raise HeError("opening", f"{client_id} is not expected to contribute to round "
                                         f"{self.round}")
            if self.closed:
                raise HeError("wrong_step", f"the commitments of round {self.round} are "
                                            "closed")
            self._check(client_id, msg)
            self.commits[client_id] = msg
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self.timeout_s,
                                                                    self.close)
            self._maybe_close()
        await self._closed.wait()
        return {"commits": list(self.commits.values())}
