"""Synchronous embedded rounds on the virtual clock (``simulation.clock``).

Each round, every device of the cohort that did not drop out takes
``wait-until-online + download + train + upload`` simulated seconds
(:class:`~tsfl.sim.clock.DeviceProfiles`). The round closes at the arrival of its
quorum — ``max(min_updates, ⌈quorum · per_round⌉)`` updates, counted against
``per_round`` so that over-selected cohorts close once enough have answered — or at
``round.deadline_s`` (simulated), whichever comes first; devices still training then are
stragglers: they never upload, exactly as if they had dropped. The round's simulated
duration (plus ``server_s``) advances the run's clock, reported as ``sim_time_s``.

Also here: the device book the selection policies read in simulation (speeds and
availability from the clock, declared label histograms from the devices' data, training
losses as devices report them).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tsfl.config import JobSpec
from tsfl.pipeline.selection_policies import DeviceBook
from tsfl.runtime.simulation import Federation
from tsfl.sim.clock import DeviceProfiles, model_bytes


def example_count(fed: Federation, cid: str) -> int:
    client = fed.clients[cid]
    n = getattr(client, "num_examples", None)
    return int(n) if isinstance(n, int) else len(client.y)


class SimulatedRounds:
    """The virtual clock of a synchronous embedded run."""

    def __init__(self, spec: JobSpec, fed: Federation):
        clock = spec.simulation.clock
        assert clock is not None
        self.spec, self.fed = spec, fed
        self.profiles = DeviceProfiles(clock, fed.client_ids, spec.seed)
        self.bytes = model_bytes(fed.workspace.layout.total_size)
        self.now = 0.0
        self.durations: list[float] = []

    def seconds(self, cid: str) -> float:
        """Wait-until-online plus the task's duration, from now."""
        start = self.profiles.next_online(cid, self.now)
        return start - self.now + self.profiles.task_seconds(
            cid, example_count(self.fed, cid), self.spec.training.epochs, self.bytes,
            self.bytes)

    def plan(self, cohort: list[str], silent: Any = ()) -> set[str]:
        """Run the round's clock: the stragglers of ``cohort`` (who will not upload); the
        ``silent`` (dropped) never arrive."""
        r = self.spec.round
        finish = sorted((self.seconds(c), c) for c in cohort if c not in silent)
        need = max(r.min_updates, math.ceil(r.quorum * self.spec.clients.per_round - 1e-9))
        arrived = [(t, c) for t, c in finish if t <= r.deadline_s]
        close = arrived[need - 1][0] if len(arrived) >= need else r.deadline_s
        ontime = {c for t, c in arrived if t <= close}
        self.durations.append(close)
        self.now += close + self.spec.simulation.clock.server_s  # type: ignore[union-attr]
        return {c for c in cohort if c not in ontime and c not in silent}


def device_book(spec: JobSpec, fed: Federation, sim: SimulatedRounds | None) -> DeviceBook:
    """What a selection policy may know of the devices: their declared label histograms
    and, on the virtual clock, their expected task time and whether they are online."""
    hist: dict[str, np.ndarray] = {}
    classes = int(fed.data.num_classes)

    def histogram(cid: str) -> np.ndarray:
        if cid not in hist:
            y = np.asarray(fed.clients[cid].y, dtype=np.int64)
            hist[cid] = np.bincount(y, minlength=classes)[:classes]
        return hist[cid]

    if sim is None:
        return DeviceBook(label_histogram=histogram)

    def expected(cid: str) -> float:
        return sim.profiles.expected_seconds(cid, example_count(fed, cid),
                                             spec.training.epochs, sim.bytes)

    return DeviceBook(expected_s=expected, online=lambda cid: sim.profiles.online(cid, sim.now),
                      label_histogram=histogram)


class Reporting:
    """A device's client whose training results also reach the device book (the loss a
    device reports with its upload; Oort's utility)."""

    def __init__(self, client: Any, cid: str, book: DeviceBook):
        self._client, self._cid, self._book = client, cid, book

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def fit_vector(self, vector: np.ndarray, config: dict[str, Any]) -> Any:
        out = self._client.fit_vector(vector, config)
        self._book.report(self._cid, int(config.get("round", 0)), int(out[1]),
                          out[2].get("train_loss"))
        return out


def configure_selection(spec: JobSpec, fed: Federation, selector: Any, job_id: str,
                        sim: SimulatedRounds | None) -> DeviceBook | None:
    """Give the selector the job's policy and device book, unless the spec selects
    uniformly without over-selection (today's draw, untouched) or the cohort is secret
    (DP: the spec refuses other policies; this is the second lock)."""
    from tsfl.pipeline.selection_policies import build_policy

    sel = spec.selection
    if (sel.kind == "uniform" and sel.over_selection == 0) or spec.private:
        return None
    book = device_book(spec, fed, sim)
    selector.policies[job_id] = (build_policy(sel, spec.seed, spec.round.deadline_s), book)
    return book


def reporting(client: Any, cid: str, book: DeviceBook | None) -> Any:
    """``client`` reporting its losses to ``book`` (Oort), or ``client`` itself."""
    return client if book is None else Reporting(client, cid, book)
