"""The server side of one SecAgg+ round, driven by device messages: the coordinator owns
one :class:`SecAggStages` per open round of a ``crypto.mode: secagg`` job.

Stages advance when every device still expected has spoken, or when the stage's time is
up (whoever is silent then has dropped): advertise → share → masked → consistency →
unmask → done (:mod:`tsfl.secagg`: signed keys, a consistency round). The
first stage's clock starts with the first device's keys (devices train first, at their
own pace; the round's deadline bounds the wait for anyone at all); each later stage's
when it begins.
A device's call for a stage returns when the next stage begins, with what it needs for
it (every signed advertisement and its neighbours' KEM keys, the sealed shares addressed
to it, the survivors, its neighbours' signatures on them). Below the threshold (or below
⌈(1 − δ)n⌉ clients) anywhere the round aborts: :attr:`outcome` carries the reason and no
sum exists. The sum includes the devices' example counts and metrics (extra ring
coordinates, :mod:`tsfl.secagg.extras`): no per-device n or metric reaches the server.
The state lives in memory only — sealed shares, public keys and unmask responses never
reach the bus, the database or a log line — so a coordinator restart fails the round
(its devices start again in the next one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tsfl.errors import TsflError
from tsfl.secagg.round import RoundConfig, SecAggAbort
from tsfl.secagg.server import SecAggServer

STAGES = ("advertise", "share", "masked", "consistency", "unmask")


class SecAggRefused(TsflError, ValueError):
    """One device's message is not acceptable (wrong stage, malformed); the round goes on."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class SecAggOutcome:
    total: np.ndarray | None  # Σ of the survivors' ring codes (None: aborted)
    survivors: list[str]
    reason: str | None = None


class SecAggStages:
    def __init__(self, config: RoundConfig, timeout_s: float,
                 on_done: Callable[[SecAggOutcome], Awaitable[None]]):
        self.config = config
        self.timeout_s = timeout_s
        self.server = SecAggServer(config)
        self.stage = STAGES[0]
        self.spoken: dict[str, set[str]] = {s: set() for s in STAGES}
        self.withdrawn: set[str] = set()  # devices that refused to go on (they said why)
        self.outcome: SecAggOutcome | None = None
        self._began: dict[str, asyncio.Event] = {s: asyncio.Event() for s in
                                                 (*STAGES, "done")}
        self._began[STAGES[0]].set()
        self._on_done = on_done
        self._timer: asyncio.TimerHandle | None = None

    # -- progress --------------------------------------------------------------------------
    def expected(self, stage: str) -> set[str]:
        """Who must speak in ``stage``: everyone still in the protocol."""
        s = self.server
        return {"advertise": set(self.config.cohort), "share": set(s.adverts),
                "masked": set(s.shared), "consistency": set(s.masked),
                "unmask": set(s.signatures)}[stage] - self.withdrawn

    def _arm(self) -> None:
        stage = self.stage
        self._timer = asyncio.get_running_loop().call_later(
            self.timeout_s, lambda: asyncio.ensure_future(self._advance(stage)))

    async def _advance(self, stage: str) -> None:
        if self.stage != stage or self.outcome is not None:
            return  # already moved on
        if self._timer:
            self._timer.cancel()
        i = STAGES.index(stage)
        try:
            if stage == "advertise":
                self.server.close_adverts()  # the graph seed; aborts below ⌈(1 − δ)n⌉
            elif stage == "masked":
                self.server.unmask_request()  # aborts below the threshold
            elif stage == "consistency":
                self.server.close_consistency()
            elif stage == "unmask":
                total, survivors = await asyncio.to_thread(self.server.result)
                await self._finish(SecAggOutcome(total, survivors))
                return
        except SecAggAbort as exc:
            await self._finish(SecAggOutcome(None, [], f"secagg aborted: {exc}"))
            return
        if i + 1 < len(STAGES) and not self.expected(STAGES[i + 1]):
            await self._finish(SecAggOutcome(None, [], "secagg aborted: no device "
                                             f"completed the {stage} stage"))
            return
        self.stage = STAGES[i + 1]
        self._arm()
        self._began[self.stage].set()

    async def _finish(self, outcome: SecAggOutcome) -> None:
        self.outcome = outcome
        self.stage = "done"
        if self._timer:
            self._timer.cancel()
        self._began["done"].set()
        for event in self._began.values():
            event.set()
        await self._on_done(outcome)

    def cancel(self) -> None:
        if self._timer:
            self._timer.cancel()
        if self.outcome is None:
            self.outcome = SecAggOutcome(None, [], "secagg round cancelled")
            for event in self._began.values():
                event.set()

    # -- device messages -------------------------------------------------------------------
    async def accept(self, client: str, stage: str, payload: dict[str, Any]) -> None:
        """Take ``client``'s ``stage`` message (refused: :class:`SecAggRefused`); the
        stage advances when it was the last one expected."""
        if stage not in STAGES:
            raise SecAggRefused("malformed", f"unknown secagg stage {stage!r}")
        if self.outcome is not None:
            raise SecAggRefused("round_closed", self.outcome.reason or "the round is over")
        if stage != self.stage:
            raise SecAggRefused("wrong_stage", f"the round is in stage {self.stage!r}, "
                                               f"not {stage!r}")
        if client not in self.expected(stage):
            raise SecAggRefused("not_selected", f"{client!r} is not expected in stage "
                                                f"{stage!r}")
        if client in self.spoken[stage]:
            raise SecAggRefused("duplicate", f"{client!r} already sent its {stage} message")
        try:
            self._ingest(client, stage, payload)
        except SecAggAbort as exc:  # one device's bad message: refuse it, not the round
            raise SecAggRefused("malformed", str(exc)) from None
        self.spoken[stage].add(client)
        if self._timer is None:
            self._arm()  # the first keys start the first stage's clock

    async def withdraw(self, client: str) -> None:
        """``client`` refused to go on (:class:`~tsfl.secagg.round.SecAggRefusal`): the
        stage stops waiting for it."""
        self.withdrawn.add(client)
        if self.outcome is None:
            await self.proceed(self.stage)

    async def proceed(self, stage: str) -> None:
        """Advance when everyone expected in ``stage`` has spoken."""
        if self.stage == stage and self.spoken[stage] >= self.expected(stage):
            await self._advance(stage)

    async def reply(self, client: str, stage: str) -> dict[str, Any]:
        """Once the stage after ``stage`` has begun: what ``client`` needs for it."""
        nxt = "done" if stage == "unmask" else STAGES[STAGES.index(stage) + 1]
        await self._began[nxt].wait()
        if self.outcome is not None and self.outcome.total is None:
            raise SecAggAbort(self.outcome.reason or "aborted")
        return self._reply(client, stage)

    def _ingest(self, client: str, stage: str, payload: dict[str, Any]) -> None:
        s = self.server
        if stage == "advertise":
            s.receive_advert(client, payload)
        elif stage == "share":
            sealed = payload.get("sealed")
            if not isinstance(sealed, dict) or not all(
                    isinstance(k, str) and isinstance(v, bytes) for k, v in sealed.items()):
                raise SecAggAbort("share needs {neighbour: sealed share}")
            s.receive_shares(client, sealed)
        elif stage == "masked":
            y = payload.get("y")
            if not isinstance(y, np.ndarray):
                raise SecAggAbort("masked needs the masked vector")
            s.receive_masked(client, y)
        elif stage == "consistency":
            sig = payload.get("sig")
            if not isinstance(sig, bytes):
                raise SecAggAbort("consistency needs the signature on the survivors")
            s.receive_signature(client, sig)
        else:
            shares = payload.get("shares")
            if not isinstance(shares, dict):
                raise SecAggAbort("unmask needs {client: (kind, share)}")
            clean = {}
            for v, entry in shares.items():
                if (not isinstance(v, str) or not isinstance(entry, list | tuple)
                        or len(entry) != 2 or entry[0] not in ("b", "s")
                        or not isinstance(entry[1], int) or entry[1] < 0):
                    raise SecAggAbort("unmask shares must be (b|s, integer)")
                clean[v] = (entry[0], entry[1])
            s.receive_unmask(client, clean)

    def _reply(self, client: str, stage: str) -> dict[str, Any]:
        s = self.server
        if stage == "advertise":
            return s.adverts_for(client)
        if stage == "share":
            return {"shares": s.shares_for(client)}
        if stage == "masked":
            return {"survivors": sorted(s.masked)}
        if stage == "consistency":
            return {"signatures": s.signatures_for(client)}
        return {}
